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
epoch's generator (``SharedNegatives.draw``, one call per epoch) and travel in ``Batch.candidates``,
so runs are reproducible by seed and the loss stays a pure function of the model and the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recbench.errors import ConfigError

#: ``train.sampled_distribution`` values.
DISTRIBUTIONS = ("uniform", "popularity")


class SharedNegatives:
    """Draws the shared candidates of every batch of an epoch and holds ``log q`` of every id.

    ``counts``: training counts of ids ``0..n`` (index 0 is padding, never drawn)."""

    def __init__(
        self,
        num_items: int,
        num_sampled: int,
        distribution: str,
        counts: Tensor | None,
        device: torch.device,
    ) -> None:
        check_options(num_sampled, distribution)
        self.num_items = int(num_items)
        self.num_sampled = int(num_sampled)
        self.distribution = distribution
        self.device = device
        if distribution == "uniform":
            probs = torch.full((self.num_items + 1,), 1.0 / self.num_items, dtype=torch.float64)
        else:
            if counts is None:
                raise ConfigError("train.sampled_distribution=popularity needs item counts")
            weights = torch.as_tensor(counts, dtype=torch.float64).clone()
            weights[0] = 0.0
            if float(weights.sum()) <= 0:
                raise ConfigError(
                    "train.sampled_distribution=popularity: no item has a training count; use uniform"
                )
            probs = weights / weights.sum()
        probs[0] = 0.0
        #: Sampling probabilities of ids 0..n (float64 on the CPU) and their logs on the device
        #: (padding and never-drawn ids get log q = 0: they are never candidates, and a padded
        #: position's logit must stay finite so that masking it out gives no NaN).
        self.probs = probs
        log_q = torch.where(probs > 0, probs.clamp_min(1e-300).log(), torch.zeros_like(probs))
        self.log_q = log_q.to(torch.float32).to(device)
        self._drawable = probs[1:].to(torch.float32).to(device)

    def draw(self, num_batches: int, generator: torch.Generator) -> Tensor:
        """``(num_batches, S)`` candidate ids, every batch's drawn independently with replacement."""
        total = num_batches * self.num_sampled
        if self.distribution == "uniform":
            ids = torch.randint(
                1, self.num_items + 1, (total,), device=self.device, generator=generator
            )
        else:
            ids = torch.multinomial(self._drawable, total, replacement=True, generator=generator) + 1
        return ids.view(num_batches, self.num_sampled)


def check_options(num_sampled: int, distribution: str) -> None:
    """``train.num_sampled`` and ``train.sampled_distribution``; one line naming the fix."""
    if isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 1:
        raise ConfigError(
            f"train.num_sampled={num_sampled} must be an integer >= 1 (shared negatives per batch "
            "for train.loss=sampled_softmax); use e.g. 1000"
        )
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"train.sampled_distribution={distribution!r} is unknown; use one of "
            f"{', '.join(DISTRIBUTIONS)}"
        )


def sampled_softmax_from_logits(
    positive: Tensor, negative: Tensor, positives: Tensor, candidates: Tensor, log_q: Tensor
) -> Tensor:
    """Per-position loss ``-log softmax`` of the corrected positive logit among the corrected
    candidate logits.

    ``positive`` ``(...)``: logits of the positives (ids ``positives``, same shape); ``negative``
    ``(..., S)``: logits of the shared ``candidates`` ``(S,)``; ``log_q`` ``(n + 1,)``."""
    pos = positive - log_q[positives]
    neg = negative - log_q[candidates]
    hits = positives.unsqueeze(-1) == candidates  # accidental hits: the positive drawn as a negative
    neg = neg.masked_fill(hits, float("-inf"))
    logits = torch.cat([pos.unsqueeze(-1), neg], -1)
    return torch.logsumexp(logits, -1) - pos


def sampled_softmax_loss(model, batch) -> Tensor:  # noqa: ANN001 - Recommender, Batch (no import cycle)
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
