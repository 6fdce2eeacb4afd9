"""Every method's budget floor: the smallest ``method.budget`` its solver reaches on a table.

For each method as configured in conf/method/ (the knobs an equal-memory sweep uses), the
``BudgetError`` a too-small budget raises carries ``floor``; that floor must be tight: a layer is
solved at it (and its real ``serving_bits`` are exactly the floor), 0.9 of it fails with the same
floor, and the message has the one format every solver shares."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from recbench.embeddings.base import BudgetedFactory, CompressedEmbedding
from recbench.errors import BudgetError, ConfigError, round_up
from recbench.record import NON_KNOB_KEYS
from tests.conftest import ROOT

METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
#: Methods whose every budget in (0, 1] is reachable: PEP's empty CSR table stores nothing.
NO_FLOOR = ("pep",)
#: Table shapes: a small user table and a larger item table, at the configs' d = 64.
SHAPES = ((300, 64), (1682, 64))
MESSAGE = re.compile(
    r"^method\.budget=\S+ is impossible for \w+ with \d+ ids: the smallest achievable budget is "
    r"\S+ \(.+\); set method\.budget >= (?P<up>[0-9.]+)( or .+)?$"
)


def method_of(name: str) -> tuple[type[CompressedEmbedding], dict[str, Any]]:
    """The layer class and the YAML knobs of conf/method/<name>.yaml (run seed 0)."""
    node = OmegaConf.load(Path(ROOT, "conf", "method", f"{name}.yaml"))
    raw = OmegaConf.to_container(OmegaConf.merge({"seed": 0}, {"m": node}), resolve=True)["m"]
    cls = get_class(raw["_target_"])
    return cls, {k: v for k, v in raw.items() if k not in NON_KNOB_KEYS}


def counts_of(n: int) -> torch.Tensor:
    """Zipf-like training counts with the padding entry first (ids by descending count)."""
    return torch.cat([torch.zeros(1), 10_000 / torch.arange(1, n + 1).float()]).long()


def floor_of(cls: type[CompressedEmbedding], n: int, d: int, knobs: dict[str, Any]) -> BudgetError:
    with pytest.raises(BudgetError) as caught:
        cls.solve_budget(1e-9, n, d, counts_of(n), **knobs)
    return caught.value


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{s[0]}-d{s[1]}")
@pytest.mark.parametrize("name", [m for m in METHODS if m not in NO_FLOOR])
def test_floor_is_the_tight_smallest_budget(name: str, shape: tuple[int, int]) -> None:
    cls, knobs = method_of(name)
    n, d = shape
    err = floor_of(cls, n, d, knobs)
    assert isinstance(err, ConfigError) and err.method == cls.__name__
    assert 0 < err.floor <= 1
    match = MESSAGE.match(str(err))
    assert match, str(err)
    assert float(match["up"]) >= err.floor  # the budget the message suggests is reached
    cls.solve_budget(float(match["up"]), n, d, counts_of(n), **knobs)

    solved = cls.solve_budget(err.floor, n, d, counts_of(n), **knobs)  # reached at the floor
    layer = cls(n + 1, d, counts=counts_of(n), **solved)
    if name == "cce":  # its solver counts the size after the first clustering (the stored codes)
        layer.cluster()
    # the floor is the real serving size of the smallest layer, not a formula beside it
    assert layer.serving_bits() / (32 * n * d) == pytest.approx(err.floor, rel=1e-12)

    with pytest.raises(BudgetError) as below:
        cls.solve_budget(err.floor * 0.9, n, d, counts_of(n), **knobs)
    assert below.value.floor == err.floor
    assert str(below.value).startswith(f"method.budget={err.floor * 0.9} is impossible")


@pytest.mark.parametrize("name", NO_FLOOR)
def test_methods_without_a_floor_reach_any_budget(name: str) -> None:
    cls, knobs = method_of(name)
    n, d = SHAPES[0]
    solved = cls.solve_budget(1e-9, n, d, counts_of(n), **knobs)
    assert cls(n + 1, d, counts=counts_of(n), **solved).serving_bits() == 0


def test_known_floors() -> None:
    """Floors by hand: full 1.0; learned_quant at 2 bits with a row step 2/32 + 1/d; low rank
    ``(n + d) / (n d)`` at rank 1; hashing ``1 / n``."""
    n, d = 943, 64
    cases = {"full": 1.0, "learned_quant": 2 / 32 + 1 / d, "low_rank": (n + d) / (n * d),
             "hashing": 1 / n}  # fmt: skip
    for name, expected in cases.items():
        cls, knobs = method_of(name)
        assert floor_of(cls, n, d, knobs).floor == pytest.approx(expected, rel=1e-12), name


def test_mixed_dim_floor_is_the_smallest_alpha_layer() -> None:
    """Mixed dimensions: the floor is the smallest layer over every alpha (the first block keeps
    d), found by the solver; every budget from it up is reached."""
    cls, knobs = method_of("mixed_dim")
    n, d = 943, 64
    err = floor_of(cls, n, d, knobs)
    assert "or more method.num_blocks" in str(err)
    for budget in (err.floor, err.floor * 1.01, 0.5):
        cls.solve_budget(budget, n, d, counts_of(n), **knobs)


def test_budget_error_pickles_and_renames() -> None:
    """A sweep's launcher may pickle the error; it keeps its floor and method."""
    err = BudgetError.unreachable("DPQEmbedding", 0.05, 943, 0.2734, "num_subspaces=1")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, BudgetError)
    assert (str(back), back.floor, back.method) == (str(err), 0.2734, "DPQEmbedding")


def test_round_up_is_never_below() -> None:
    assert round_up(0.078125) == "0.078125"
    assert round_up(0.11284722222222222) == "0.112848"
    assert round_up(7.8125e-06) == "0.0000078125"
    assert round_up(1.0) == "1"
    for value in (0.1 + 0.2, 1 / 3, 2 / 3, 1e-7 / 3):
        assert float(round_up(value)) >= value


def test_budgeted_factory_collects_unreached_tables() -> None:
    """With a list, a table below its floor is built at the floor and its error collected (so the
    backbone's other tables are solved too); without one, the error is raised at once."""
    cls, knobs = method_of("low_rank")
    from functools import partial

    factory = partial(cls, **knobs)
    with pytest.raises(BudgetError):  # rank 1 of 300 x 64 is 364 / 19200 = 0.019 of full
        BudgetedFactory(factory, 0.017)(301, 64, counts=counts_of(300))
    unreached: list[BudgetError] = []
    budgeted = BudgetedFactory(factory, 0.017, unreached)
    layer = budgeted(301, 64, counts=counts_of(300))
    budgeted(2001, 64, counts=counts_of(2000))  # 2064 / 128000 = 0.016 fits: nothing collected
    (err,) = unreached
    assert layer.knobs()["rank"] == 1 and err.floor == pytest.approx(364 / (300 * 64))
