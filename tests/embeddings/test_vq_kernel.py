"""The compiled nearest-centroid search (``recbench.embeddings.vq_kernel``, ``train.fused_vq``):
the same codes and chosen values as the eager grid search and brute-force ``argmin`` (ties, equal
values, crowded cells, views), the same training (bit for bit) in DPQ and MGQE, and a one-line
error when there is no C compiler."""

from __future__ import annotations

import functools

import pytest
import torch

from recbench.embeddings import DPQEmbedding, MGQEmbedding, vq, vq_kernel
from recbench.engine.loop import FitOptions, fit
from recbench.engine.samplers.pairs import PairSampler
from recbench.errors import ConfigError
from recbench.models.base import DataInfo
from recbench.models.gmf import GMF
from tests.test_training import small_ranking_data

needs_compiler = pytest.mark.skipif(
    vq_kernel._compiler() is None, reason="no C compiler on this machine"
)


def centroids_and_queries(spread: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, K)`` centroids of one kind and ``(B, D)`` queries on and around them: random ones,
    the midpoints of sorted neighbours (exact ties), the values themselves and their float
    neighbours, and points beyond both ends."""
    gen = torch.Generator().manual_seed(seed)
    centroids = torch.randn(16, 64, generator=gen) * 0.01
    if spread == "duplicates":
        centroids = (centroids * 300).round() / 300  # many equal values per subspace
    elif spread == "crowded":
        centroids[:, :40] = centroids[:, :1]  # 40 equal values: the eager binary-search fallback
    elif spread == "wide":
        centroids = centroids + 100.0
    elif spread == "outlier":
        centroids[:, 7] = 0.3  # stretches the grid: many values per cell
        centroids[:, 5] = centroids[:, 9]
    elif spread == "zeros":
        centroids[:, :3] = 0.0
        centroids[:, 3] = -0.0  # equal to 0.0: one run, the lowest index answers
    ordered = centroids.sort(dim=1).values
    queries = torch.cat(
        [
            torch.randn(200, 16, generator=gen) * 0.012 + centroids.mean(1),
            ((ordered[:, :-1] + ordered[:, 1:]) / 2).T,
            ordered.T,
            torch.nextafter(ordered, torch.full_like(ordered, 1e9)).T,
            torch.nextafter(ordered, torch.full_like(ordered, -1e9)).T,
            (ordered[:, :1] - 1.0).T,
            (ordered[:, -1:] + 1.0).T,
        ]
    )
    return centroids, queries


@needs_compiler
@pytest.mark.parametrize(
    "spread", ["gaussian", "duplicates", "crowded", "wide", "outlier", "zeros"]
)
@pytest.mark.parametrize("seed", range(2))
def test_kernel_equals_the_eager_search_and_argmin(spread: str, seed: int) -> None:
    centroids, queries = centroids_and_queries(spread, seed)
    brute = (queries.unsqueeze(2) - centroids.unsqueeze(0)).pow(2).argmin(-1)
    eager_codes, eager_values = vq.nearest_centroids(queries.unsqueeze(-1), centroids.unsqueeze(-1))
    codes, values = vq.nearest_centroids(queries.unsqueeze(-1), centroids.unsqueeze(-1), fused=True)
    assert codes.dtype == torch.int32  # the kernel answered (not the eager fallback)
    assert torch.equal(codes.long(), brute)
    assert torch.equal(codes.long(), eager_codes.long())
    assert torch.equal(values.view(torch.int32), eager_values.view(torch.int32))  # -0.0 too


@needs_compiler
def test_kernel_reads_strided_centroid_views_and_small_k() -> None:
    """MGQE ``shared_k`` searches a prefix view ``[:, :K_i]`` of the shared table; K = 2 is the
    smallest table."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(8, 32, 1, generator=gen)
    queries = torch.randn(300, 8, 1, generator=gen)
    for view in (table[:, :5], table[:, :2], table[:, 3:9]):
        got = vq.nearest_centroids(queries, view, fused=True)
        want = vq.nearest_centroids(queries, view)
        assert torch.equal(got[0].long(), want[0].long()) and torch.equal(got[1], want[1])


def test_kernel_leaves_other_searches_to_the_eager_path() -> None:
    """Wider subspaces, float64 and NaN centroids take the eager search (``fused`` is a hint)."""
    queries = torch.randn(50, 4, 3)
    centroids = torch.randn(4, 8, 3)
    assert torch.equal(
        vq.nearest_centroids(queries, centroids, fused=True)[0],
        vq.nearest_centroids(queries, centroids)[0],
    )
    assert not vq_kernel.applies(queries[..., :1].double(), centroids[..., :1].double())
    if vq_kernel._compiler() is not None:
        broken = torch.randn(4, 8, 1)
        broken[2, 3] = float("nan")
        assert vq_kernel.search(torch.randn(5, 4, 1), broken) is None


@needs_compiler
@pytest.mark.parametrize(
    "factory",
    [
        functools.partial(DPQEmbedding, num_subspaces=8, num_centroids=16),
        functools.partial(MGQEmbedding, num_subspaces=8, num_centroids=[16, 4]),
        functools.partial(
            MGQEmbedding, variant="unshared_k", num_subspaces=8, num_centroids=[16, 4]
        ),
    ],
    ids=["dpq", "mgqe_shared_k", "mgqe_unshared_k"],
)
def test_fused_training_is_bit_identical(factory: functools.partial) -> None:
    """``train.fused_vq=true`` trains exactly like the eager search: same losses, same
    parameters, same served table."""
    data = small_ranking_data()
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = GMF(DataInfo.from_prepared(data), factory, embedding_dim=8)
        options = FitOptions(loss="bce", epochs=2, lr=0.05, seed=3, progress=False, fused_vq=fused)
        result = fit(model, PairSampler(data, 2, 64, torch.device("cpu")), options)
        assert model.item_embedding.fused_search is fused
        model.eval()
        results.append(
            (
                [row["train/loss"] for row in result.history],
                model.state_dict(),
                model.item_embedding.full_table(),
            )
        )
    (losses0, state0, table0), (losses1, state1, table1) = results
    assert losses0 == losses1
    assert all(torch.equal(state0[k], state1[k]) for k in state0)
    assert torch.equal(table0, table1)


def test_missing_compiler_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vq_kernel, "_library", None)
    monkeypatch.setattr(vq_kernel, "_compiler", lambda: None)
    model = GMF(
        DataInfo.from_prepared(small_ranking_data()),
        functools.partial(DPQEmbedding, num_subspaces=8, num_centroids=16),
        embedding_dim=8,
    )
    with pytest.raises(ConfigError, match=r"train\.fused_vq=true needs a C compiler") as info:
        vq.use_fused_search(model)
    assert "\n" not in str(info.value) and "train.fused_vq=false" in str(info.value)
    assert vq.use_fused_search(model, enabled=False) == 2  # switching off needs no compiler


@needs_compiler
def test_auto_uses_the_kernel_when_it_builds_and_falls_back_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``train.fused_vq=auto`` (the default): the compiled search on CPU when a compiler builds
    it; the eager search, without an error, when none can or when the model is not on the CPU."""
    model = GMF(
        DataInfo.from_prepared(small_ranking_data()),
        functools.partial(DPQEmbedding, num_subspaces=8, num_centroids=16),
        embedding_dim=8,
    )
    layers = [model.user_embedding, model.item_embedding]
    cpu = torch.device("cpu")
    assert vq.use_fused_search(model, required=False, device=torch.device("cuda")) == 0
    assert not any(layer.fused_search for layer in layers)
    assert vq.use_fused_search(model, required=False, device=cpu) == 2
    assert all(layer.fused_search for layer in layers)
    vq.use_fused_search(model, enabled=False)
    monkeypatch.setattr(vq_kernel, "_library", None)
    monkeypatch.setattr(vq_kernel, "_compiler", lambda: None)
    assert vq.use_fused_search(model, required=False, device=cpu) == 0
    assert not any(layer.fused_search for layer in layers)
    with pytest.raises(ConfigError, match="needs a C compiler"):
        vq.use_fused_search(model, required=True, device=cpu)
