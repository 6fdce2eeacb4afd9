"""The rating task's sampler: one example per training rating."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from recbench.data.prepared import PreparedData
from recbench.engine.contracts import Batch


class RatingSampler:
    """Rating task: each training rating is one example."""

    def __init__(self, data: PreparedData, batch_size: int, device: torch.device) -> None:
        self.users = torch.from_numpy(data.train.user).to(device)
        self.items = torch.from_numpy(data.train.item).to(device)
        self.ratings = torch.from_numpy(np.asarray(data.train.rating, dtype=np.float32)).to(device)
        self.batch_size = batch_size
        self.device = device

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(len(self.users), device=self.device, generator=generator)
        users, items, ratings = self.users[perm], self.items[perm], self.ratings[perm]
        for start in range(0, len(users), self.batch_size):
            stop = start + self.batch_size
            yield Batch(
                context=users[start:stop], items=items[start:stop], target=ratings[start:stop]
            )
