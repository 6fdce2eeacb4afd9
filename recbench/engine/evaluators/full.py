"""Full ranking: every item is scored, the user's training items (and at test time the validation
item) are excluded, the positive is always a candidate (rules: ``evaluators.metrics``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recbench.data.prepared import PreparedData
from recbench.engine.evaluators.metrics import eval_mode, metrics_from_ranks, ranks_of_targets


def csr_rows_mask(indptr: Tensor, indices: Tensor, rows: Tensor, num_cols: int) -> Tensor:
    """Dense (len(rows), num_cols) bool mask with True at each row's CSR entries (vectorised)."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    mask = torch.zeros(len(rows), num_cols, dtype=torch.bool, device=indices.device)
    total = int(lengths.sum())
    if total:
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
        offsets = torch.arange(total, device=rows.device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths
        )
        mask[row_of, indices[torch.repeat_interleave(starts, lengths) + offsets]] = True
    return mask


@dataclass
class RankingTargets:
    """The users evaluated on one part and their held-out item; ``extra`` is one more item per user
    to exclude (the validation item at test time), or None."""

    users: Tensor
    targets: Tensor
    extra: Tensor | None = None


class RankingEvaluator:
    """Full-ranking evaluation of one part ("valid" or "test"), batched over users; a
    ``contracts.RankingEvaluation``.

    ``context_of(users, part)`` turns user ids into the model's context (the ids themselves for
    collaborative-filtering models, the input sequences for sequential models).
    """

    def __init__(
        self,
        data: PreparedData,
        *,
        k: int = 10,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
        context_of: Callable[[Tensor, str], Tensor] | None = None,
    ) -> None:
        self.k = k
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.num_items = data.num_items
        indptr, items = data.train_csr()
        self.indptr = torch.from_numpy(indptr).to(self.device)
        self.items = torch.from_numpy(items).to(self.device)
        self.parts = {
            "valid": RankingTargets(
                users=torch.from_numpy(data.valid.user).to(self.device),
                targets=torch.from_numpy(data.valid.item).to(self.device),
            ),
            "test": self._test_targets(data),
        }
        self.context_of = context_of or (lambda users, part: users)

    def _test_targets(self, data: PreparedData) -> RankingTargets:
        extra = np.zeros(data.num_users + 1, dtype=np.int64)
        extra[data.valid.user] = data.valid.item
        users = torch.from_numpy(data.test.user).to(self.device)
        return RankingTargets(
            users=users,
            targets=torch.from_numpy(data.test.item).to(self.device),
            extra=torch.from_numpy(extra).to(self.device)[users],
        )

    def exclusion(self, users: Tensor, part: str, batch: slice) -> Tensor:
        """Training items (and at test time the validation item) plus the padding column."""
        mask = csr_rows_mask(self.indptr, self.items, users, self.num_items + 1)
        mask[:, 0] = True
        extra = self.parts[part].extra
        if extra is not None:
            mask[torch.arange(len(users), device=self.device), extra[batch]] = True
        return mask

    def ranks(self, score_fn: Callable[[Tensor], Tensor], part: str) -> Tensor:
        """Ranks of the held-out items of ``part`` under ``score_fn(context) -> (B, n+1)``."""
        spec = self.parts[part]
        out = []
        for start in range(0, len(spec.users), self.batch_size):
            batch = slice(start, start + self.batch_size)
            users = spec.users[batch]
            scores = score_fn(self.context_of(users, part)).float()
            out.append(
                ranks_of_targets(
                    scores,
                    spec.targets[batch],
                    self.exclusion(users, part, batch),
                    where=f"{part} scores",
                )
            )
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> dict[str, float]:
        with eval_mode(model):
            return metrics_from_ranks(self.ranks(model.score_all, part), self.k)

    @torch.no_grad()
    def popularity(self, item_counts: Tensor, part: str) -> dict[str, float]:
        """The most-popular-unseen-items baseline: every user's scores are the training counts."""
        counts = item_counts.to(self.device, torch.float32)
        return metrics_from_ranks(self.ranks(lambda ctx: counts.expand(len(ctx), -1), part), self.k)
