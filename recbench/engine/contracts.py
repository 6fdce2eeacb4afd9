"""Where the middle layer's parts meet: the batch a sampler yields and a loss reads, and the small
protocols that samplers and evaluators satisfy (the loop and the entry point type against these,
never against a union of classes).

* ``Sampler``: pair (``samplers.pairs``), rating (``samplers.ratings``) and sequence
  (``samplers.sequences``) samplers alike: ``len()`` batches per epoch, ``epoch(generator)`` yields
  them.
* ``Evaluator``: scores a model on the ``"valid"`` or ``"test"`` part (full ranking, the sampled
  protocol, rating error). ``RankingEvaluation`` adds what the two ranking protocols
  (``evaluators.full``, ``evaluators.sampled``) share: ``k``, the contexts they score and the
  most-popular baseline under the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Batch:
    """One training step's input. ``items[..., 0]`` is the positive, ``items[..., 1:]`` negatives
    (ranking/sequential); for rating batches ``items`` are the rated items and ``target`` ratings.
    ``mask`` marks the positions that count (sequential padding), or None. ``candidates``: the
    ``(S,)`` negatives shared by every position (``train.loss=sampled_softmax``) and ``log_q`` the
    log sampling probability of every id, or None."""

    context: Tensor
    items: Tensor
    target: Tensor | None = None
    mask: Tensor | None = None
    candidates: Tensor | None = None
    log_q: Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Scored (context, item) pairs in this batch, positives and negatives alike."""
        per = self.items.shape[-1] + (0 if self.candidates is None else self.candidates.numel())
        n = (
            self.items.numel() // max(self.items.shape[-1], 1)
            if self.mask is None
            else int(self.mask.sum())
        )
        return n * per


@runtime_checkable
class Sampler(Protocol):
    """Turns a task's training data into the batches of one epoch (a fresh order per epoch)."""

    def __len__(self) -> int:
        """Batches per epoch (the progress bar's total)."""
        ...

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """The epoch's batches; every random draw comes from ``generator`` (runs repeat by seed)."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """Scores a model on one part of the held-out data."""

    def evaluate(self, model: torch.nn.Module, part: str) -> dict[str, float]:
        """Metrics (named by ``recbench.record``) of ``model`` on ``part`` (valid or test)."""
        ...


@runtime_checkable
class RankingEvaluation(Evaluator, Protocol):
    """A ranking protocol (full or sampled): metrics at ``k``, the model contexts of users, and
    the popularity baseline scored under the very same candidates."""

    k: int
    context_of: Callable[[Tensor, str], Tensor]

    def popularity(self, item_counts: Tensor, part: str) -> dict[str, float]:
        """The metrics of scoring every candidate by its training count."""
        ...
