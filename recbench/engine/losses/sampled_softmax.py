"""Sampled softmax: a loss between ``bce`` (one sampled negative per position) and ``ce`` (a softmax
over every item).

Why: ``ce`` scores every item at every training position; on amazon-games (23.7k items) that is a
``(B L) x n`` matrix product per step, ten times the rest of a SASRec step on a CPU. The sampled
softmax scores each position's positive against ``train.num_sampled`` items drawn once per batch and
shared by all its positions (one ``(B L) x S`` product), the classic estimator of the full softmax
(Jean et al. 2015; Bengio & Senecal 2008):

* the ``S`` candidates are drawn with replacement from ``q``: uniform over the items
  (``train.sampled_distribution=uniform``) or proportional to their training counts
  (``popularity``);
* **logQ correction**: ``log q(i)`` is subtracted from every logit, the positive's included, so that
  the sampled softmax is a consistent estimate of the full one whatever ``q`` (with uniform ``q`` it
  is a constant and changes nothing);
* **accidental hits**: a candidate equal to the position's positive is masked out (it would be
  counted as its own negative).

With every item as a candidate and uniform ``q`` the loss is exactly the full softmax
cross-entropy (``tests/test_sampled_softmax.py``). The candidates are drawn by the sampler with the
epoch's generator (``samplers.shared.SharedNegatives.draw``, one call per epoch) and travel in
``Batch.candidates``, so runs are reproducible by seed and the loss stays a pure function of the
model and the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recbench.engine.contracts import Batch
from recbench.errors import ConfigError
from recbench.models.base import Recommender


def sampled_softmax_from_logits(
    positive: Tensor, negative: Tensor, positives: Tensor, candidates: Tensor, log_q: Tensor
) -> Tensor:
    """Per-position loss ``-log softmax`` of the corrected positive logit among the corrected
    candidate logits.

    ``positive`` ``(...)``: logits of the positives (ids ``positives``, same shape); ``negative``
    ``(..., S)``: logits of the shared ``candidates`` ``(S,)``; ``log_q`` ``(n + 1,)``."""
    pos = positive - log_q[positives]
    neg = negative - log_q[candidates]
    hits = (
        positives.unsqueeze(-1) == candidates
    )  # accidental hits: the positive drawn as a negative
    neg = neg.masked_fill(hits, float("-inf"))
    logits = torch.cat([pos.unsqueeze(-1), neg], -1)
    return torch.logsumexp(logits, -1) - pos


def sampled_softmax_loss(model: Recommender, batch: Batch) -> Tensor:
    """``train.loss=sampled_softmax``: the positive (``batch.items[..., 0]``) against the batch's
    shared ``batch.candidates``, logQ-corrected, accidental hits masked, averaged over real
    positions."""
    if batch.candidates is None or batch.log_q is None:
        raise ConfigError(
            "train.loss=sampled_softmax needs a sampler that draws shared candidates; "
            "use it with the ranking or sequential task"
        )
    positives = batch.items[..., 0]
    positive, negative = model.sampled_logits(batch.context, positives, batch.candidates)
    per = sampled_softmax_from_logits(positive, negative, positives, batch.candidates, batch.log_q)
    if batch.mask is None:
        return per.mean()
    mask = batch.mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp_min(1.0)
