"""Ranking losses over a ``Batch`` whose ``items[..., 0]`` is the positive."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from recbench.engine.contracts import Batch
from recbench.models.base import Recommender


def _masked_mean(per_example: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_example.mean()
    mask = mask.to(per_example.dtype)
    return (per_example * mask).sum() / mask.sum().clamp_min(1.0)


def bce_loss(model: Recommender, batch: Batch) -> Tensor:
    """Binary cross-entropy: the positive labelled 1, each sampled negative 0 (NCF, SASRec)."""
    scores = model.score(batch.context, batch.items)
    per = F.softplus(-scores[..., 0]) + F.softplus(scores[..., 1:]).sum(-1)
    return _masked_mean(per, batch.mask)


def bpr_loss(model: Recommender, batch: Batch) -> Tensor:
    """Bayesian personalised ranking: -log sigmoid(s_pos - s_neg), averaged over negatives."""
    scores = model.score(batch.context, batch.items)
    per = -F.logsigmoid(scores[..., :1] - scores[..., 1:]).mean(-1)
    return _masked_mean(per, batch.mask)


def ce_loss(model: Recommender, batch: Batch) -> Tensor:
    """Full softmax cross-entropy of the positive against every item (no sampling)."""
    logits = model.full_logits(batch.context)
    logits = logits.clone()
    logits[..., 0] = float("-inf")  # padding is never a candidate
    target = batch.items[..., 0]
    # Padded positions have target 0, whose logit is -inf: ignore them (else inf * 0 = nan).
    per = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none", ignore_index=0
    )
    return _masked_mean(per.reshape(target.shape), batch.mask)
