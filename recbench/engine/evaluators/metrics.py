"""Ranks and metrics (the protocol of docs/design.md).

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

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from recbench import record
from recbench.errors import RecbenchError


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate in eval mode (no dropout, served tables) and give the model back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
        record.metric_name("hr", k): float(hit.to(torch.float64).mean()),
        record.metric_name("ndcg", k): float(ndcg.mean()),
        record.metric_name("mrr"): float((1.0 / (ranks + 1.0)).mean()),
    }


def rating_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """RMSE and MAE."""
    err = pred.to(torch.float64) - target.to(torch.float64)
    return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}
