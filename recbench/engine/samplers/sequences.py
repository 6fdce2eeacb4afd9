"""The sequential task's sampler: item sequences for training (the evaluation contexts are
``recbench.engine.evaluators.sequences``).

Data come from the same leave-last-two-out split as the ranking task (``PreparedData``, training
events sorted by user and time; the last event of each user is the test item, the one before it the
validation item). On top of it:

* **Training** (as in the SASRec reference code): each user whose training sequence ``s_1..s_T`` has
  ``T >= 2`` gives one example per epoch, the input ``s_1..s_{T-1}`` and the positives ``s_2..s_T``
  (position t predicts the next item), both keeping the most recent ``max_len`` and left-padded with
  0. Each real position gets ``num_negatives`` negatives drawn uniformly among the items the user has
  no training interaction with (``samplers.negatives.NegativeSampler``); padding positions are
  masked out of the loss (``Batch.mask``).
* **Evaluation contexts**: the validation prediction is conditioned on the training sequence, the
  test prediction on the training sequence followed by the validation item (last ``max_len`` items,
  left-padded). Exclusion of already-seen items is the evaluator's job (``RankingEvaluator``).

Everything is built once, vectorised, as tensors on the training device; an epoch only permutes users,
draws negatives and slices batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recbench.data.prepared import PreparedData
from recbench.engine.contracts import Batch
from recbench.engine.samplers.negatives import NegativeSampler
from recbench.engine.samplers.shared import SharedNegatives
from recbench.errors import ConfigError, DataError


def left_padded_windows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int
) -> np.ndarray:
    """Rows ``items[starts[r]:ends[r]]`` right-aligned in a ``(len(starts), max_len)`` int64 array,
    keeping the last ``max_len`` entries of each row and padding on the left with 0."""
    offsets = np.arange(max_len - 1, -1, -1, dtype=np.int64)  # distance from the right end
    source = ends[:, None] - 1 - offsets[None, :]  # index of the item shown in each column
    valid = source >= starts[:, None]
    out = np.zeros((len(starts), max_len), dtype=np.int64)
    out[valid] = items[source[valid]]
    return out


def training_sequences(
    data: PreparedData, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, inputs, positives): one row per user with at least two training items; ``inputs`` are
    the training items but the last and ``positives`` the items but the first, both ``(U, max_len)``,
    left-padded, most recent last."""
    indptr, items = data.train_csr()
    lengths = np.diff(indptr)
    users = np.flatnonzero(lengths >= 2).astype(np.int64)
    starts, ends = indptr[users], indptr[users + 1]
    inputs = left_padded_windows(items, starts, ends - 1, max_len)
    positives = left_padded_windows(items, starts + 1, ends, max_len)
    return users, inputs, positives


@dataclass
class SequenceBatch(Batch):
    """A ``Batch`` whose count of scored pairs is known without reading the mask back from the
    device (one host synchronisation per epoch instead of one per step)."""

    samples: int = 0

    @property
    def num_samples(self) -> int:
        return self.samples


def check_max_len(max_len: int) -> None:
    if int(max_len) < 1:
        raise ConfigError(f"model.max_len={max_len} must be >= 1 (SASRec uses 50)")


class SequenceSampler:
    """Sequential task: one example per user per epoch (input sequence, per-position positive and
    negatives, padding mask), users in a fresh random order each epoch.

    ``Batch.context`` is ``(B, L)``; ``Batch.items`` is ``(B, L, 1 + k)`` with the positive first;
    ``Batch.mask`` is ``positive != 0``. Leading columns that are padding for every row of a batch
    are cut off (exactly equivalent for a model whose output ignores left padding, and cheaper).
    """

    def __init__(
        self,
        data: PreparedData,
        *,
        max_len: int,
        num_negatives: int,
        batch_size: int,
        device: torch.device,
        trim: bool = True,
        shared: SharedNegatives | None = None,
    ) -> None:
        check_max_len(max_len)
        if num_negatives < 0:
            raise ConfigError(f"train.num_negatives={num_negatives} must be >= 0")
        users, inputs, positives = training_sequences(data, int(max_len))
        if len(users) == 0:
            raise DataError(
                f"dataset {data.name!r}: no user has two training items, so there is no "
                "next-item example to train on; use a dataset with longer histories"
            )
        self.device = device
        self.batch_size = int(batch_size)
        self.k = int(num_negatives)
        self.trim = trim
        #: ``train.loss=sampled_softmax``: candidates shared by all positions of a batch.
        self.shared = shared
        self.users = torch.from_numpy(users).to(device)
        self.inputs = torch.from_numpy(inputs).to(device)
        self.positives = torch.from_numpy(positives).to(device)
        self.mask = self.positives != 0
        self.lengths = torch.from_numpy((positives != 0).sum(1)).to(device)
        self.negatives = NegativeSampler(
            torch.from_numpy(data.train.user),
            torch.from_numpy(data.train.item),
            data.num_items,
            device,
        )

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.users)

    def epoch_items(self, order: Tensor, generator: torch.Generator) -> Tensor:
        """``(len(order), L, 1 + k)``: positives then fresh negatives at real positions, 0 elsewhere."""
        pos = self.positives[order]
        if self.k == 0:
            return pos.unsqueeze(-1)
        real = self.mask[order]
        users = self.users[order].unsqueeze(1).expand_as(pos)[real]
        neg = torch.zeros(*pos.shape, self.k, dtype=pos.dtype, device=self.device)
        neg[real] = self.negatives.sample(users, self.k, generator)
        return torch.cat([pos.unsqueeze(-1), neg], -1)

    def epoch(self, generator: torch.Generator) -> Iterator[SequenceBatch]:
        order = torch.randperm(len(self.users), device=self.device, generator=generator)
        items = self.epoch_items(order, generator)
        context, mask = self.inputs[order], self.mask[order]
        # One host read per epoch: each batch's longest sequence and number of real positions.
        lengths = self.lengths[order]
        starts = list(range(0, len(order), self.batch_size))
        pad = len(starts) * self.batch_size - len(order)
        padded = torch.cat([lengths, lengths.new_zeros(pad)]).reshape(len(starts), -1)
        longest = padded.max(1).values.tolist()
        counts = padded.sum(1).tolist()
        width = self.positives.shape[1]
        drawn = self.shared.draw(len(starts), generator) if self.shared is not None else None
        per_position = items.shape[-1] + (0 if drawn is None else drawn.shape[1])
        for step, (start, longest_b, count) in enumerate(zip(starts, longest, counts)):
            stop = start + self.batch_size
            first = width - max(int(longest_b), 1) if self.trim else 0
            yield SequenceBatch(
                context=context[start:stop, first:],
                items=items[start:stop, first:],
                mask=mask[start:stop, first:],
                candidates=None if drawn is None else drawn[step],
                log_q=None if self.shared is None else self.shared.log_q,
                samples=int(count) * per_position,
            )
