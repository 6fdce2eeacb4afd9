"""Assembly: a composed config -> prepared data, method factories, the model.

Why a module of its own: the entry point (``run.py``), the serving artifact's ``export`` and the
scripts all need "the data and the model this config describes", and none of them may import the
entry point (docs/design.md: no import loop). This module knows Hydra's ``instantiate`` and the
config's shape; it knows nothing of tracking, training or the console.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import recbench.config  # noqa: F401 - registers the schema, so callers can compose configs
from recbench.checks import rename_method_keys
from recbench.data.prepared import PreparedData, prepare
from recbench.embeddings.base import BudgetedFactory, EmbeddingFactory
from recbench.errors import BudgetError, ConfigError, RecbenchError, round_up
from recbench.models.base import DataInfo, Recommender


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators from one seed (data split, sampling, initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a RecbenchError raised inside the target surfaces as itself
    (Hydra wraps it in an InstantiationException whose message is several lines long)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, RecbenchError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def load_data(cfg: DictConfig) -> PreparedData:
    """Load the dataset named by the config and prepare it for the run's task and seed."""
    inter = build(cfg.dataset.loader)
    ds = cfg.dataset
    return prepare(
        inter,
        cfg.task,
        seed=cfg.seed,
        rating_split=tuple(ds.rating_split),
        rating_range=None if ds.rating_range is None else tuple(ds.rating_range),
        min_user_count=ds.min_user_count,
        min_item_count=ds.min_item_count,
        duplicates=ds.get("duplicates", "keep"),
        tie_break=ds.get("tie_break", "file"),
    )


def method_factory(
    node: DictConfig, where: str = "method", unreached: list[BudgetError] | None = None
) -> EmbeddingFactory:
    """The embedding factory a method node describes; with ``budget`` set, its size knob is solved
    per layer (``CompressedEmbedding.solve_budget``) instead of read from the YAML. ``where`` is
    the node's key: errors of the user table's method name ``user_method.<knob>``. ``unreached``:
    collect the tables whose budget cannot be reached instead of raising (``BudgetedFactory``)."""
    knobs = OmegaConf.to_container(node, resolve=True)
    budget = knobs.pop("budget", None)
    with renamed_errors(where):
        factory = build(knobs)
        if budget is not None:
            factory = BudgetedFactory(factory, float(budget), unreached)
    return factory if where == "method" else _RenamedFactory(factory, where)


def renamed(exc: ConfigError, where: str) -> ConfigError:
    """``exc`` with its ``method.<knob>`` keys named ``<where>.<knob>`` (same type and floor)."""
    if where == "method":
        return exc
    text = rename_method_keys(str(exc), where)
    if isinstance(exc, BudgetError):
        return BudgetError(text, exc.floor, exc.method, exc.num_ids)
    return ConfigError(text)


@contextmanager
def renamed_errors(where: str) -> Iterator[None]:
    """Re-raise a ConfigError with its ``method.<knob>`` keys named ``<where>.<knob>``."""
    try:
        yield
    except ConfigError as exc:
        if where == "method":
            raise
        raise renamed(exc, where) from None


def largest_floor(errors: list[BudgetError]) -> BudgetError:
    """One error for the tables of a model that cannot reach their budget: the one with the
    largest floor (the budget a user would have to ask for so that every table fits), its message
    naming the other tables' floors."""
    worst = max(errors, key=lambda e: e.floor)
    others = list(
        dict.fromkeys(  # a backbone may ask twice for the same table (NeuMF's two item layers)
            f"{e.key} >= {round_up(e.floor)} for {e.method} with {e.num_ids} ids"
            for e in errors
            if str(e) != str(worst)
        )
    )
    if not others:
        return worst
    return BudgetError(
        f"{worst} (the largest floor of the tables that miss their budget; also "
        f"{'; '.join(others)})",
        worst.floor, worst.method, worst.num_ids,
    )  # fmt: skip


class _RenamedFactory:
    """A method factory whose errors (budget solver, knob checks at build time) name ``where``."""

    def __init__(self, factory: EmbeddingFactory, where: str) -> None:
        self.factory, self.where = factory, where

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with renamed_errors(self.where):
            return self.factory(*args, **kwargs)


def build_model(cfg: DictConfig, data: PreparedData) -> Recommender:
    """The backbone with its embedding layers built by the method factories. A budget that some
    tables cannot reach raises one ``BudgetError`` after every table was tried, with the largest
    floor among them (``largest_floor``): the run records the budget that would fit them all."""
    unreached: dict[str, list[BudgetError]] = {"method": [], "user_method": []}
    item_factory = method_factory(cfg.method, unreached=unreached["method"])
    user_factory = None
    if cfg.get("user_method") is not None:
        user_factory = method_factory(cfg.user_method, "user_method", unreached["user_method"])
    model_factory = build(cfg.model)
    model = model_factory(
        DataInfo.from_prepared(data), item_embedding=item_factory, user_embedding=user_factory
    )
    errors = [renamed(e, where) for where, found in unreached.items() for e in found]
    if errors:  # every table was solved (those below their floor at it): name the largest floor
        raise largest_floor(errors)
    return model
