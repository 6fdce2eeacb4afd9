"""Helpers for backbone tests: tiny data facts and a backbone built with a method from conf/."""

from __future__ import annotations

import hydra.utils
import torch
from omegaconf import OmegaConf

from recbench.models.base import DataInfo, Recommender
from tests.conftest import CONF


def zipf_counts(num_ids: int) -> torch.Tensor:
    """Descending training counts for ids 1..num_ids (index 0 = padding = 0)."""
    return torch.cat([torch.zeros(1), 1000 / torch.arange(1, num_ids + 1).float()]).long()


def tiny_info(num_users: int = 20, num_items: int = 50) -> DataInfo:
    return DataInfo(
        num_users=num_users,
        num_items=num_items,
        user_counts=zipf_counts(num_users),
        item_counts=zipf_counts(num_items),
    )


def build_with_method(
    model: str, method: str, *, num_users: int = 30, num_items: int = 300, **model_knobs
) -> Recommender:
    """``conf/model/<model>.yaml``'s model with every embedding layer built by
    ``conf/method/<method>.yaml`` (as ``run.py`` does, budget left out), small knobs overridden."""
    model_cfg = OmegaConf.load(CONF / "model" / f"{model}.yaml").model
    for key, value in model_knobs.items():
        model_cfg[key] = value
    from recbench.assembly import method_factory
    from tests.conftest import method_node

    factory = method_factory(method_node(method))
    return hydra.utils.instantiate(model_cfg)(
        tiny_info(num_users, num_items), item_embedding=factory
    )
