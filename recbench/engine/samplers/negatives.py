"""Uniform negatives over the items a user has not interacted with in training."""

from __future__ import annotations

import torch
from torch import Tensor

from recbench.errors import DataError


class NegativeSampler:
    """Uniform negatives over the items a user has *not* interacted with in training.

    Vectorised rejection sampling: draw uniformly from 1..n, test every (user, item) pair at once,
    and redraw only the hits, testing only the redrawn ones in later rounds. The test is a lookup
    in a dense users x items bitmap when that fits in ``BITMAP_LIMIT`` bytes (MovieLens scale: one
    gather), else a ``searchsorted`` in the sorted array of training keys (large vocabularies).
    """

    #: Largest dense bitmap of seen (user, item) pairs, in bytes (one byte per pair).
    BITMAP_LIMIT = 1 << 26

    def __init__(self, users: Tensor, items: Tensor, num_items: int, device: torch.device) -> None:
        self.num_items = num_items
        self.device = device
        users, items = users.to(torch.int64), items.to(torch.int64)
        # distinct items per user: a repeated (user, item) event does not use up a negative
        distinct = torch.unique(users * (num_items + 1) + items)
        per_user = torch.bincount(distinct // (num_items + 1))
        if per_user.numel() and int(per_user.max()) >= num_items:
            raise DataError(
                "a user interacted with every item, so no negative can be sampled; "
                "filter such users (dataset.min_item_count / k-core) or use a larger catalogue"
            )
        num_users = int(users.max()) + 1 if users.numel() else 1
        self.bitmap: Tensor | None = None
        self.keys: Tensor | None = None
        if num_users * (num_items + 1) <= self.BITMAP_LIMIT:
            self.bitmap = torch.zeros(num_users, num_items + 1, dtype=torch.bool)
            self.bitmap[users, items] = True
            self.bitmap = self.bitmap.to(device)
        else:
            self.keys = torch.unique(users * (num_items + 1) + items).to(device)

    def _seen(self, users: Tensor, items: Tensor) -> Tensor:
        if self.bitmap is not None:
            return self.bitmap[users, items]
        assert self.keys is not None
        keys = users * (self.num_items + 1) + items
        pos = torch.searchsorted(self.keys, keys).clamp_(max=max(len(self.keys) - 1, 0))
        return self.keys[pos] == keys

    def sample(self, users: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """(len(users), k) negatives for each user (an element of ``users`` may repeat)."""
        users = users.to(self.device, torch.int64).unsqueeze(-1).expand(*users.shape, k)
        neg = torch.randint(
            1, self.num_items + 1, users.shape, device=self.device, generator=generator
        )
        flat_users, flat_neg = users.reshape(-1), neg.view(-1)
        todo = torch.arange(flat_neg.numel(), device=self.device)
        for _ in range(1000):
            bad = todo[self._seen(flat_users[todo], flat_neg[todo])]
            if bad.numel() == 0:
                return neg
            flat_neg[bad] = torch.randint(
                1, self.num_items + 1, (bad.numel(),), device=self.device, generator=generator
            )
            todo = bad
        raise DataError("negative sampling did not converge: users have seen almost every item")
