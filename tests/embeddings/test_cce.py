"""CCE: clustering semantics, the serving size before/after clustering (hand computed), the artifact
after clustering, the clustering schedule driven by ``fit``, and the budget solver."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from recbench.embeddings.cce import CCEmbedding, kmeans
from recbench.errors import BudgetError, ConfigError


def layer(n: int = 3000, d: int = 16, **knobs) -> CCEmbedding:  # noqa: ANN003
    return CCEmbedding(n + 1, d, **{"num_columns": 4, "num_rows": 100, **knobs})


def test_memory_count_by_hand_paper_accounting() -> None:
    """The paper's accounting: c columns, each two k x (d/c) float tables (2*k*d floats in all),
    plus, once clustered, an index of ceil(log2 k) bits per id and column. n = 3000, d = 16, c = 4,
    k = 100: tables 2 * 100 * 16 = 3,200 floats = 102,400 bits; indices 4 * 3000 * 7 = 84,000 bits."""
    emb = layer()
    assert sum(p.numel() for p in emb.parameters()) == 3_200
    assert emb.serving_bits() == 102_400  # hashed pointers are recomputed, never stored
    emb.cluster()
    assert emb.serving_bits() == 102_400 + 84_000 == 186_400
    stored = emb.serving_tensors()
    assert (
        sum(t.numel() * t.element_size() * 8 for t in stored.values()) == 186_400
    )  # 84,000 = 10,500 bytes


def test_clustering_replaces_the_tables_and_keeps_the_sketch() -> None:
    """After a clustering step column i's table holds the k-means centroids of the column's
    vectors, the hashed table is zero, and each id moves only to its centroid; with k >= n the
    clustering is exact (every id its own centroid)."""
    emb = layer(n=300, d=8, num_columns=2, num_rows=50)
    emb.eval()
    before = emb.full_table().detach().clone()
    emb.cluster()
    after = emb.full_table().detach()
    assert torch.all(emb.hashed_table == 0) and emb.rounds.tolist() == [1, 1]
    column = before[1:, :4]
    centroids, assignment = emb.clustered_table[:50], emb.pointers[1:, 0]
    torch.testing.assert_close(after[1:, :4], centroids[assignment])
    # Each vector sits at its nearest centroid, and the clustered table is closer than any 50 ids.
    distances = torch.cdist(column, centroids)
    assert torch.equal(distances.argmin(1), assignment)
    assert float((after[1:] - before[1:]).pow(2).sum()) < float(before[1:].pow(2).sum())
    exact = layer(n=40, d=8, num_columns=2, num_rows=64)
    exact.eval()
    reference = exact.full_table().detach().clone()
    exact.cluster()
    torch.testing.assert_close(exact.full_table(), reference)
    # The next hashed pointers come from a new hash function.
    assert not torch.equal(
        exact.hashed_pointers, layer(n=40, d=8, num_columns=2, num_rows=64).hashed_pointers
    )


def test_kmeans_recovers_separated_blobs() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(50)
    points = centres[labels] + 0.1 * torch.randn(150, 2)
    found, assignment = kmeans(points, 3, iterations=20, seed=1)
    # Same partition up to a relabelling, centroids near the true centres.
    mapping = {int(assignment[labels == j][0]) for j in range(3)}
    assert len(mapping) == 3
    for j in range(3):
        assert assignment[labels == j].unique().numel() == 1
    assert torch.cdist(found, centres).min(1).values.max() < 0.1


def test_artifact_and_state_dict_round_trip_after_clustering() -> None:
    emb = layer(n=500, d=16, num_rows=40)
    with torch.no_grad():
        emb.hashed_table.add_(0.01)
    emb.cluster()
    with torch.no_grad():
        emb.hashed_table.normal_(std=0.01)  # training after the clustering
    emb.eval()
    rebuilt = CCEmbedding.table_from_serving(emb.serving_tensors(), emb.serving_meta())
    torch.testing.assert_close(rebuilt, emb.full_table().detach(), rtol=0, atol=1e-7)
    clone = layer(n=500, d=16, num_rows=40)
    clone.load_state_dict(emb.state_dict())
    clone.eval()
    assert clone.serving_bits() == emb.serving_bits()
    torch.testing.assert_close(clone.full_table(), emb.full_table())


def test_wide_assignments_round_trip() -> None:
    """k > 2^16 rows need 17-bit pointers: stored as a 16-bit and a 1-bit packed slice."""
    emb = CCEmbedding(65_538, 2, num_columns=1, num_rows=65_537)
    emb.cluster()  # n = k: every id gets its own row, pointers up to 65,536
    emb.eval()
    stored = emb.serving_tensors()
    assert sorted(stored) == ["assignment_0", "assignment_1", "clustered_table", "hashed_table"]
    assert emb.serving_bits() == 64 * 65_537 * 2 + 65_537 * 17
    rebuilt = CCEmbedding.table_from_serving(stored, emb.serving_meta())
    torch.testing.assert_close(rebuilt, emb.full_table().detach(), rtol=0, atol=0)


def test_schedule_clusters_every_n_epochs_a_fixed_number_of_times() -> None:
    emb = layer(n=200, num_rows=20, cluster_every=2, num_clusterings=2)
    replaced = [bool(emb.on_epoch_end(epoch)) for epoch in range(1, 8)]
    assert replaced == [False, True, False, True, False, False, False]
    assert emb.rounds.tolist() == [2, 2, 2, 2]
    never = layer(n=200, num_rows=20, num_clusterings=0)
    assert never.on_epoch_end(1) == [] and never.serving_bits() == 64 * 20 * 16


def test_fit_calls_the_hook_and_drops_the_tables_optimizer_state() -> None:
    from recbench.engine.loop import FitOptions, fit
    from recbench.engine.optim import make_optimizer
    from recbench.engine.samplers.pairs import PairSampler
    from recbench.models.base import DataInfo
    from recbench.models.gmf import GMF
    from tests.test_training import small_ranking_data

    data = small_ranking_data()
    factory = functools.partial(CCEmbedding, num_columns=2, num_rows=8, num_clusterings=2)
    model = GMF(DataInfo.from_prepared(data), factory, embedding_dim=8)
    options = FitOptions(loss="bce", epochs=3, lr=0.01, progress=False)
    fit(model, PairSampler(data, 2, 64, torch.device("cpu")), options)
    assert model.item_embedding.rounds.tolist() == [2, 2] == model.user_embedding.rounds.tolist()
    # What the loop does with the returned parameters: their Adam state is dropped, the rest kept.
    from recbench.engine.losses.ranking import bce_loss

    optimizer = make_optimizer(model, lr=0.01, weight_decay=0.0)
    model.train()
    batch = next(PairSampler(data, 2, 64, torch.device("cpu")).epoch(torch.Generator()))
    bce_loss(model, batch).backward()
    optimizer.step()
    adam = optimizer.optimizers[0]
    item = model.item_embedding
    assert item.clustered_table in adam.state and item.hashed_table in adam.state
    item.num_clusterings = 3
    optimizer.forget(item.on_epoch_end(4))
    assert item.clustered_table not in adam.state and item.hashed_table not in adam.state
    assert model.user_embedding.clustered_table in adam.state
    optimizer.step()  # Adam re-initialises the dropped state
    assert int(adam.state[item.clustered_table]["step"]) == 1


@pytest.mark.parametrize("budget", [0.5, 0.25, 0.1, 0.05])
def test_budget_picks_the_largest_rows_that_fit(budget: float) -> None:
    n, d, c = 2000, 64, 4
    knobs = CCEmbedding.solve_budget(budget, n, d, num_columns=c, num_clusterings=3)
    k = knobs["num_rows"]

    def bits(rows: int) -> int:
        return 64 * rows * d + c * n * math.ceil(math.log2(rows))

    assert bits(k) <= budget * 32 * n * d < bits(k + 1)
    emb = CCEmbedding(n + 1, d, **knobs)
    emb.cluster()
    assert emb.serving_bits() == bits(k)


def test_budget_impossible_and_knob_errors() -> None:
    with pytest.raises(
        BudgetError, match=r"method.budget=0.0001 is impossible for CCEmbedding .* \(num_rows=2\)"
    ):
        CCEmbedding.solve_budget(0.0001, 2000, 64, num_columns=4)
    with pytest.raises(ConfigError, match="method.num_columns=5 must divide embedding_dim=64"):
        CCEmbedding.check_knobs(64, num_columns=5)
    with pytest.raises(ConfigError, match="method.num_rows=1 must be an integer"):
        CCEmbedding.check_knobs(64, num_rows=1)
    with pytest.raises(ConfigError, match="method.cluster_every=0 must be an integer >= 1"):
        CCEmbedding.check_knobs(64, cluster_every=0)


def test_cli_run_records_the_size_after_clustering_and_follows_the_seed(tmp_path) -> None:  # noqa: ANN001
    """``python -m recbench.run method=cce``: the hash seed is the run's ``seed``, and the recorded
    size is the served one (assignments included), equal to the artifact's formula."""
    import json

    from tests.test_cli import TINY, run_cli

    proc = run_cli([*TINY, "method=cce", "seed=3", "method.budget=0.25", "tracking=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    knobs = record["knobs"]["item_embedding"]
    assert knobs["hash_seed"] == 3
    metrics = record["metrics"]
    assert metrics["size/serving_bits"] == metrics["serving/formula_bits"]
    n, k, d = 60, knobs["num_rows"], 64
    assert metrics["size/layer/item_embedding"] == 64 * k * d + 4 * n * math.ceil(math.log2(k))
    assert metrics["size/layer/item_embedding"] <= 0.25 * 32 * n * d
