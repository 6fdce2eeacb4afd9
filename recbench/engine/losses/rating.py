"""The rating loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from recbench.engine.contracts import Batch
from recbench.errors import ConfigError
from recbench.models.base import Recommender


def mse_loss(model: Recommender, batch: Batch) -> Tensor:
    """Squared error of predicted ratings."""
    if batch.target is None:
        raise ConfigError("train.loss=mse needs ratings; use it with a rating task (task=rating)")
    return F.mse_loss(model.score(batch.context, batch.items), batch.target)
