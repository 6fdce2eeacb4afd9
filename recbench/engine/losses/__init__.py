"""Losses by name (``train.loss``): ``ranking`` (bce, bpr, ce), ``rating`` (mse) and
``sampled_softmax``; each is ``loss(model, batch) -> scalar``, a pure function of both."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from recbench.engine.contracts import Batch
from recbench.engine.losses.ranking import bce_loss, bpr_loss, ce_loss
from recbench.engine.losses.rating import mse_loss
from recbench.engine.losses.sampled_softmax import sampled_softmax_loss
from recbench.errors import ConfigError
from recbench.models.base import Recommender

LOSSES: dict[str, Callable[[Recommender, Batch], Tensor]] = {
    "bce": bce_loss,
    "bpr": bpr_loss,
    "mse": mse_loss,
    "ce": ce_loss,
    "sampled_softmax": sampled_softmax_loss,
}

#: Which losses make sense for which task (checked before training starts).
TASK_LOSSES = {
    "rating": ("mse",),
    "ranking": ("bce", "bpr", "ce", "sampled_softmax"),
    "sequential": ("bce", "bpr", "ce", "sampled_softmax"),
}


def check_loss(task: str, loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"train.loss={loss!r} is unknown; choose one of {', '.join(LOSSES)}")
    if loss not in TASK_LOSSES[task]:
        raise ConfigError(
            f"train.loss={loss} does not fit task={task}; use one of {', '.join(TASK_LOSSES[task])}"
        )


def loss_function(loss: str, compile: bool = False) -> Callable[[Recommender, Batch], Tensor]:
    """The step's loss by name, under ``torch.compile`` when ``compile`` (``train.compile``)."""
    return torch.compile(LOSSES[loss]) if compile else LOSSES[loss]
