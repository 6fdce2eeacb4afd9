"""The ranking task's sampler: (user, item) events with sampled negatives."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from recbench.data.prepared import PreparedData
from recbench.engine.contracts import Batch
from recbench.engine.samplers.negatives import NegativeSampler
from recbench.engine.samplers.shared import SharedNegatives
from recbench.errors import ConfigError


class PairSampler:
    """Ranking task: each training (user, item) event is one example with ``num_negatives``
    sampled negatives; an epoch visits every event once in a fresh random order."""

    def __init__(
        self,
        data: PreparedData,
        num_negatives: int,
        batch_size: int,
        device: torch.device,
        shared: SharedNegatives | None = None,
    ) -> None:
        if num_negatives < 1 and shared is None:
            raise ConfigError("train.num_negatives must be >= 1 for ranking losses (NCF uses 4)")
        self.shared = shared
        self.users = torch.from_numpy(data.train.user).to(device)
        self.items = torch.from_numpy(data.train.item).to(device)
        self.k = num_negatives
        self.batch_size = batch_size
        self.device = device
        self.negatives = NegativeSampler(self.users, self.items, data.num_items, device)

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(len(self.users), device=self.device, generator=generator)
        users, pos = self.users[perm], self.items[perm]
        if self.shared is not None:  # sampled softmax: negatives shared per batch, none per pair
            items = pos.unsqueeze(1)
            drawn = self.shared.draw(len(self), generator)
        else:
            items = torch.cat(
                [pos.unsqueeze(1), self.negatives.sample(users, self.k, generator)], 1
            )
        for step, start in enumerate(range(0, len(users), self.batch_size)):
            stop = start + self.batch_size
            if self.shared is not None:
                yield Batch(
                    context=users[start:stop], items=items[start:stop],
                    candidates=drawn[step], log_q=self.shared.log_q,
                )  # fmt: skip
            else:
                yield Batch(context=users[start:stop], items=items[start:stop])
