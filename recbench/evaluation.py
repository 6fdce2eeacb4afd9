"""Metrics and evaluators (the protocol of docs/design.md).

Ranking: every item is scored (full ranking); the user's training items are excluded from the
candidates (and, at test time, the validation item); the positive is always a candidate. With ``s``
the positive's score, ``rank = #(candidates scoring > s) + 0.5 * #(other candidates scoring == s)``
(0-based; ties count half). Then HR@K = [rank < K], NDCG@K = [rank < K] / log2(rank + 2) and
MRR = 1 / (rank + 1) over all items, averaged over users.

Rating: RMSE and MAE of the predictions (clipped to the dataset's rating range) on held-out events.

A NaN or infinite score (or rating prediction) fails the evaluation with a ``RecbenchError``, so a
diverged model is recorded FAILED instead of scoring HR@10 = 1 (a NaN never ranks "higher").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recbench.data.prepared import PreparedData
from recbench.errors import RecbenchError


def check_finite(values: Tensor, where: str, consider: Tensor | None = None) -> None:
    """Raise ``RecbenchError`` if a value that counts (``consider``, default all) is NaN or infinite.

    Why: a NaN score is never "higher" than the positive's, so NaN weights would rank every held-out
    item first and report HR@10 = NDCG@10 = MRR = 1; an infinite score would tie or win by fiat.
    """
    bad = ~torch.isfinite(values)
    if consider is not None:
        bad &= consider
    count = int(bad.sum())
    if count:
        raise RecbenchError(
            f"the model produced {count} non-finite {where} (NaN or inf), so no metric is "
            "meaningful; training diverged: lower train.lr or check the method's knobs"
        )


def ranks_of_targets(
    scores: Tensor, targets: Tensor, exclude: Tensor | None = None, *, where: str = "scores"
) -> Tensor:
    """0-based rank of each target among the candidates, ties counting half.

    ``scores``: (B, N) float; ``targets``: (B,) column indices; ``exclude``: optional (B, N) bool of
    non-candidates (the target itself is always kept as the positive). A non-finite score of a
    candidate raises ``RecbenchError`` (``where`` names the scores in the message).
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    candidate = None
    if exclude is not None:
        candidate = ~exclude
        candidate[rows, targets] = True
    check_finite(scores, where, candidate)
    positive = scores[rows, targets].unsqueeze(1)
    others = scores.clone() if exclude is None else scores.masked_fill(exclude, float("-inf"))
    others[rows, targets] = float("-inf")
    higher = (others > positive).sum(1)
    equal = (others == positive).sum(1)
    return higher.to(torch.float64) + 0.5 * equal.to(torch.float64)


def metrics_from_ranks(ranks: Tensor, k: int) -> dict[str, float]:
    """HR@k, NDCG@k and MRR (means over users) from 0-based ranks."""
    ranks = ranks.to(torch.float64)
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    return {
        f"hr_at_{k}": float(hit.to(torch.float64).mean()),
        f"ndcg_at_{k}": float(ndcg.mean()),
        "mrr": float((1.0 / (ranks + 1.0)).mean()),
    }


def rating_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """RMSE and MAE."""
    err = pred.to(torch.float64) - target.to(torch.float64)
    return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}


def csr_rows_mask(
    indptr: Tensor, indices: Tensor, rows: Tensor, num_cols: int
) -> Tensor:
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
    """Full-ranking evaluation of one part ("valid" or "test"), batched over users.

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
                    scores, spec.targets[batch], self.exclusion(users, part, batch),
                    where=f"{part} scores",
                )
            )
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            return metrics_from_ranks(self.ranks(model.score_all, part), self.k)
        finally:
            model.train(was_training)

    @torch.no_grad()
    def popularity(self, item_counts: Tensor, part: str) -> dict[str, float]:
        """The most-popular-unseen-items baseline: every user's scores are the training counts."""
        counts = item_counts.to(self.device, torch.float32)
        return metrics_from_ranks(
            self.ranks(lambda ctx: counts.expand(len(ctx), -1), part), self.k
        )


class RatingEvaluator:
    """RMSE/MAE on the held-out ratings of one part, predictions clipped to the rating range."""

    def __init__(
        self, data: PreparedData, *, batch_size: int = 65536, device: torch.device | str = "cpu"
    ) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.range = data.rating_range
        self.parts = {
            name: (
                torch.from_numpy(part.user).to(self.device),
                torch.from_numpy(part.item).to(self.device),
                torch.from_numpy(np.asarray(part.rating, dtype=np.float32)).to(self.device),
            )
            for name, part in (("valid", data.valid), ("test", data.test))
            if part.rating is not None and len(part) > 0
        }

    def has(self, part: str) -> bool:
        return part in self.parts

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> dict[str, float]:
        users, items, ratings = self.parts[part]
        was_training = model.training
        model.eval()
        try:
            preds = torch.cat(
                [
                    model.score(users[s : s + self.batch_size], items[s : s + self.batch_size])
                    for s in range(0, len(users), self.batch_size)
                ]
            )
        finally:
            model.train(was_training)
        check_finite(preds, f"{part} rating predictions")
        if self.range is not None:
            preds = preds.clamp(self.range[0], self.range[1])
        return rating_metrics(preds, ratings)


def lower_is_better(metric: str) -> bool:
    """Error metrics are minimised, ranking metrics maximised."""
    return metric in ("rmse", "mae", "loss")


def is_improvement(new: float, best: float | None, metric: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new < best if lower_is_better(metric) else new > best
