"""Metrics against hand-computed cases: ties, exclusions, cut-offs, and the evaluator's protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbench.data.interactions import Interactions
from recbench.data.prepared import prepare
from recbench.engine.evaluators.full import RankingEvaluator, csr_rows_mask
from recbench.engine.evaluators.metrics import metrics_from_ranks, ranks_of_targets, rating_metrics
from recbench.engine.evaluators.rating import RatingEvaluator
from recbench.models.gmf import GMF


def test_rank_counts_higher_and_half_of_ties() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1, 0.7]])
    # positive at column 1 (0.5): higher = {0.9, 0.7}, one tie (column 2) -> 2 + 0.5
    assert ranks_of_targets(scores, torch.tensor([1])).tolist() == [2.5]


def test_excluded_candidates_do_not_count_and_positive_is_kept() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1, 0.7]])
    exclude = torch.tensor([[True, True, False, False, False]])  # excludes 0.9 and the positive
    # the positive stays a candidate; only 0.7 is higher, column 2 ties -> 1.5
    assert ranks_of_targets(scores, torch.tensor([1]), exclude).tolist() == [1.5]


def test_all_ties_rank_in_the_middle() -> None:
    scores = torch.zeros(2, 5)
    assert ranks_of_targets(scores, torch.tensor([0, 4])).tolist() == [2.0, 2.0]


def test_metrics_by_hand() -> None:
    ranks = torch.tensor([0.0, 2.5, 9.0, 10.0])
    m = metrics_from_ranks(ranks, k=10)
    assert m["hr_at_10"] == pytest.approx(3 / 4)  # rank 10 is outside the top 10
    ndcg = (1 / math.log2(2) + 1 / math.log2(4.5) + 1 / math.log2(11)) / 4
    assert m["ndcg_at_10"] == pytest.approx(ndcg)
    assert m["mrr"] == pytest.approx((1 + 1 / 3.5 + 1 / 10 + 1 / 11) / 4)


def test_rating_metrics_by_hand() -> None:
    m = rating_metrics(torch.tensor([3.0, 4.0, 1.0]), torch.tensor([4.0, 4.0, 3.0]))
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["mae"] == pytest.approx(1.0)


def test_csr_rows_mask() -> None:
    indptr = torch.tensor([0, 0, 2, 3])
    items = torch.tensor([1, 3, 2])
    mask = csr_rows_mask(indptr, items, torch.tensor([2, 1, 0]), 4)
    assert mask.tolist() == [
        [False, False, True, False],
        [False, True, False, True],
        [False, False, False, False],
    ]


def toy_data():
    """Two users, five items. u1: a, b, c, d (d test, c valid); u2: b, e, a (a test, e valid)."""
    inter = Interactions(
        user=np.array([1, 1, 1, 1, 2, 2, 2]),
        item=np.array([10, 20, 30, 40, 20, 50, 10]),
        timestamp=np.array([1, 2, 3, 4, 1, 2, 3]),
        name="toy",
    )
    return prepare(inter, "ranking", seed=0)


class TableModel(torch.nn.Module):
    """Scores given by a fixed (users+1, items+1) table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.table[users]


def test_evaluator_excludes_training_items_and_validation_item_at_test() -> None:
    data = toy_data()
    enc_u = lambda raw: int(data.users.encode(np.array([raw]))[0])  # noqa: E731
    enc_i = lambda raw: int(data.items.encode(np.array([raw]))[0])  # noqa: E731
    u1 = enc_u(1)
    table = torch.zeros(data.num_users + 1, data.num_items + 1)
    # user 1: training items a, b score highest; validation item c next; test item d; e lowest.
    for raw, score in ((10, 10.0), (20, 9.0), (30, 8.0), (40, 5.0), (50, 1.0)):
        table[u1, enc_i(raw)] = score
    ev = RankingEvaluator(data, k=1)
    ranks = ev.ranks(TableModel(table).score_all, "test")
    order = ev.parts["test"].users.tolist().index(u1)
    # a, b (train) and c (validation) are excluded: only e remains, lower -> rank 0
    assert ranks[order] == 0.0
    ranks_valid = ev.ranks(TableModel(table).score_all, "valid")
    # at validation only a, b are excluded: c is the positive, d and e are lower -> rank 0
    assert ranks_valid[ev.parts["valid"].users.tolist().index(u1)] == 0.0
    # padding column 0 never counts even with a huge score
    table[u1, 0] = 1e9
    assert ev.ranks(TableModel(table).score_all, "test")[order] == 0.0


def test_no_leakage_between_parts() -> None:
    data = toy_data()
    train = set(zip(data.train.user.tolist(), data.train.item.tolist()))
    for part in (data.valid, data.test):
        for pair in zip(part.user.tolist(), part.item.tolist()):
            assert pair not in train


def test_popularity_baseline_ranks_by_training_counts() -> None:
    data = toy_data()
    ev = RankingEvaluator(data, k=10)
    m = ev.popularity(data.item_counts, "test")
    assert 0 < m["mrr"] <= 1


def test_rating_evaluator_clips_to_range() -> None:
    inter = Interactions(
        user=np.arange(1, 21),
        item=np.arange(1, 21) % 3 + 1,
        rating=np.full(20, 5.0, dtype=np.float32),
        timestamp=None,
        name="r",
    )
    data = prepare(inter, "rating", seed=0, rating_range=(1, 5), rating_split=(0.5, 0.25, 0.25))

    class Constant(torch.nn.Module):
        def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return torch.full(users.shape, 7.0)

    m = RatingEvaluator(data).evaluate(Constant(), "test")
    assert m["rmse"] == 0.0 and m["mae"] == 0.0  # 7 is clipped to 5


def nan_gmf(data):  # noqa: ANN001, ANN201
    """GMF whose output weights are NaN (a diverged model): every score is NaN."""
    from recbench.embeddings.full import FullEmbedding
    from recbench.models.base import DataInfo
    from recbench.models.gmf import GMF

    model = GMF(DataInfo.from_prepared(data), item_embedding=FullEmbedding, embedding_dim=8)
    with torch.no_grad():
        model.output.weight.fill_(float("nan"))
    return model


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_candidate_score_fails(bad: float) -> None:
    scores = torch.tensor([[0.9, 0.5, bad, 0.1]])
    from recbench.errors import RecbenchError

    with pytest.raises(RecbenchError, match="1 non-finite scores"):
        ranks_of_targets(scores, torch.tensor([1]))
    with pytest.raises(RecbenchError, match="non-finite"):  # the positive itself
        ranks_of_targets(scores, torch.tensor([2]), torch.tensor([[False, False, True, False]]))
    # an excluded non-candidate does not count
    assert ranks_of_targets(
        scores, torch.tensor([1]), torch.tensor([[False, False, True, False]])
    ).tolist() == [1.0]


def test_nan_weights_fail_full_and_sampled_evaluation(tmp_path) -> None:  # noqa: ANN001
    from recbench.engine.evaluators.sampled import SampledEvaluator
    from recbench.errors import RecbenchError

    data = toy_data()
    model = nan_gmf(data)
    for part in ("valid", "test"):
        with pytest.raises(RecbenchError, match=f"non-finite {part} scores"):
            RankingEvaluator(data).evaluate(model, part)
    sampled = SampledEvaluator(data, seed=0, num_sampled=1, directory=tmp_path)
    with pytest.raises(RecbenchError, match="non-finite test scores \\(sampled protocol\\)"):
        sampled.evaluate(model, "test")


def test_nan_rating_predictions_fail() -> None:
    from recbench.errors import RecbenchError

    inter = Interactions(
        user=np.arange(1, 21),
        item=np.arange(1, 21) % 3 + 1,
        rating=np.full(20, 5.0, dtype=np.float32),
        timestamp=None,
        name="r",
    )
    data = prepare(inter, "rating", seed=0, rating_range=(1, 5), rating_split=(0.5, 0.25, 0.25))
    with pytest.raises(RecbenchError, match="non-finite test rating predictions"):
        RatingEvaluator(data).evaluate(nan_gmf(data), "test")


class EvalNaNGMF(GMF):
    """GMF that trains normally but scores NaN in eval mode (a model that diverged at evaluation)."""

    def score_all(self, context: torch.Tensor) -> torch.Tensor:
        out = super().score_all(context)
        return out if self.training else torch.full_like(out, float("nan"))


def test_cli_run_with_nan_scores_is_recorded_failed(tmp_path) -> None:  # noqa: ANN001
    import json

    from tests.test_cli import TINY, error_lines, mlflow_runs, run_cli

    proc = run_cli([*TINY, "model._target_=tests.test_evaluation.EvalNaNGMF"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert "non-finite valid scores" in line and "Traceback" not in proc.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "FAILED" and "non-finite" in record["error"]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"
