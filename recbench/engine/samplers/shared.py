"""The candidates of ``train.loss=sampled_softmax``: drawn once per epoch by the sampler with the
epoch's generator and shared by every position of a batch (``Batch.candidates``), with ``log q`` of
every id for the logQ correction. Why and how: ``recbench.engine.losses.sampled_softmax``.
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
            ids = (
                torch.multinomial(self._drawable, total, replacement=True, generator=generator) + 1
            )
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
