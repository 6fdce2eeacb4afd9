"""The vector quantization shared by DPQ and MGQE (``recbench.embeddings.vq``): the nearest-centroid
search against brute force (ties included), the fused straight-through lookup against autograd, and
distinct ids."""

from __future__ import annotations

import pytest
import torch

from recbench.embeddings import vq
from recbench.embeddings.vq import (
    distinct_ids,
    nearest_codes,
    quantize,
    straight_through_vq,
    vq_aux_sum,
)


@pytest.mark.parametrize(
    ("num_subspaces", "num_centroids", "dim"), [(64, 256, 1), (8, 64, 1), (4, 32, 3)]
)
def test_nearest_codes_equals_brute_force_argmin(
    num_subspaces: int, num_centroids: int, dim: int
) -> None:
    queries = torch.randn(500, num_subspaces, dim)
    centroids = torch.randn(num_subspaces, num_centroids, dim)
    brute = ((queries.unsqueeze(2) - centroids.unsqueeze(0)) ** 2).sum(-1).argmin(-1)
    assert torch.equal(nearest_codes(queries, centroids), brute)


def test_nearest_codes_ties_go_to_the_lowest_index() -> None:
    centroids = torch.tensor([[0.0, 1.0, 1.0, -1.0, 2.0]]).unsqueeze(-1)  # a duplicated value
    queries = torch.tensor([-5.0, -1.0, 0.5, 1.0, 1.5, 0.0, 9.0]).view(-1, 1, 1)
    brute = ((queries.unsqueeze(2) - centroids.unsqueeze(0)) ** 2).sum(-1).argmin(-1)
    assert (
        nearest_codes(queries, centroids).view(-1).tolist()
        == brute.view(-1).tolist()
        == [3, 3, 0, 1, 1, 0, 4]
    )


@pytest.mark.parametrize("spread", ["gaussian", "duplicates", "crowded", "wide"])
def test_scalar_search_equals_brute_force_including_ties(spread: str) -> None:
    """The bucket-grid search for scalar subspaces against ``argmin`` of the squared distances:
    queries on centroid values and on midpoints (exact ties go to the lowest index), duplicated
    centroids, a crowded grid (the binary-search fallback) and values far from the spread."""
    gen = torch.Generator().manual_seed(7)
    centroids = torch.randn(16, 64, generator=gen) * 0.01
    if spread == "duplicates":
        centroids = (centroids * 300).round() / 300  # many equal values per subspace
    elif spread == "crowded":
        centroids[:, :40] = centroids[:, :1]  # 40 equal values in one cell
    elif spread == "wide":
        centroids = centroids + 100.0
    queries = torch.randn(400, 16, generator=gen) * 0.012 + centroids.mean(1)
    ordered = centroids.sort(dim=1).values
    queries[:63] = ((ordered[:, :-1] + ordered[:, 1:]) / 2).T  # midpoints: ties
    queries[63:127] = ordered.T  # exactly on the centroids
    queries[127] = ordered[:, 0] - 1.0  # beyond both ends
    queries[128] = ordered[:, -1] + 1.0
    brute = (queries.unsqueeze(2) - centroids.unsqueeze(0)).pow(2).argmin(-1)
    got, chosen = vq.nearest_centroids(queries.unsqueeze(-1), centroids.unsqueeze(-1))
    assert torch.equal(got.long(), brute)
    assert torch.equal(chosen[..., 0], centroids.gather(1, brute.T).T)  # the exact values
    assert torch.equal(vq._nearest_1d_searchsorted(queries, centroids), brute)
    grid = vq._ScalarGrid.build(centroids)
    assert (grid is None) == (spread == "crowded")  # 40 equal values: the binary search


def test_straight_through_vq_equals_the_autograd_reference() -> None:
    """The fused straight-through + aux function gives the values and gradients of
    ``q + sg(c - q)`` and ``vq_aux_sum`` written with autograd."""
    gen = torch.Generator().manual_seed(3)
    q0, c0 = torch.randn(9, 4, 2, generator=gen), torch.randn(9, 4, 2, generator=gen)
    weights = torch.tensor([1, 0, 3, 2, 1, 1, 5, 0, 2])
    up, w_aux = torch.randn(9, 4, 2, generator=gen), 0.7
    grads = []
    for fused in (True, False):
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        if fused:
            out, aux = straight_through_vq(q, c, 0.25, weights)
        else:
            out, aux = q + (c - q).detach(), vq_aux_sum(q, c, 0.25, weights)
        ((out * up).sum() + w_aux * aux).backward()
        grads.append((out.detach(), aux.detach(), q.grad, c.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_distinct_ids_bincount_path_equals_unique() -> None:
    flat = torch.tensor([5, 0, 9, 5, 5, 2, 9, 30])
    expected = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
    for got in (distinct_ids(flat, 31), distinct_ids(flat, None)):
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_scalar_grid_search_on_trained_like_centroids(dtype: torch.dtype, seed: int) -> None:
    """Centroids spread like trained ones (clusters, outliers, a few equal values) and many
    queries near centroid values and midpoints: the grid search equals ``argmin`` (lowest index
    among exact ties), in both float widths, including crowded cells (several values per cell)."""
    gen = torch.Generator().manual_seed(seed)
    centroids = torch.cat(
        [
            torch.randn(32, 200, generator=gen) * 0.01,
            torch.randn(32, 56, generator=gen) * 0.001 + 0.02,
        ],
        1,
    ).to(dtype)
    centroids[:, 5] = centroids[:, 9]  # exact duplicates, the higher index first in value order
    centroids[:, 7] = 0.3  # an outlier stretches the grid: crowded cells
    ordered = centroids.sort(dim=1).values
    queries = torch.cat(
        [
            torch.randn(300, 32, generator=gen, dtype=dtype) * 0.012,
            ((ordered[:, :-1] + ordered[:, 1:]) / 2).T,
            ordered.T,
            torch.nextafter(ordered, torch.full_like(ordered, 1.0)).T,
        ]
    )
    brute = (queries.unsqueeze(2) - centroids.unsqueeze(0)).pow(2).argmin(-1)
    grid = vq._ScalarGrid.build(centroids)
    assert grid is not None and grid.crowded > 1
    assert torch.equal(nearest_codes(queries.unsqueeze(-1), centroids.unsqueeze(-1)), brute)


@pytest.mark.parametrize("s", [1, 3])
def test_quantize_equals_the_autograd_reference(s: int) -> None:
    """``quantize`` (search, gather, straight-through output, aux loss and the padding row in one
    autograd node) against the same lookup written with ``gather`` and autograd: equal outputs, aux
    and gradients for the queries and the centroids."""
    gen = torch.Generator().manual_seed(5)
    q0 = torch.randn(7, 4, s, generator=gen)
    q0[0] = 0.0  # row 0 is the padding id
    c0 = torch.randn(4, 6, s, generator=gen)
    weights = torch.tensor([0, 2, 1, 3, 1, 1, 4])
    up = torch.randn(7, 4, s, generator=gen)
    results = []
    for fused in (True, False):
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        codes = nearest_codes(q, c)
        if fused:
            out, aux = quantize(q, c, codes, 0.25, weights, padding_first=torch.tensor([True]))
        else:
            chosen = c[torch.arange(4), codes]
            out = (q + (chosen - q).detach()) * (torch.arange(7) != 0).view(-1, 1, 1)
            aux = vq_aux_sum(q, chosen, 0.25, weights)
        ((out * up).sum() + 0.7 * aux).backward()
        results.append((out.detach(), aux.detach(), q.grad, c.grad))
    assert torch.all(results[0][0][0] == 0)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", ["dpq", "shared_k", "unshared_d"])
def test_empty_and_padding_only_batches(variant: str) -> None:
    """No ids, or only the padding id: zeros of the right shape, a zero aux loss, and a backward
    that runs where there is a graph (the batched per-tier lookup has no tier to search)."""
    from recbench.embeddings import DPQEmbedding, MGQEmbedding

    if variant == "dpq":
        layer = DPQEmbedding(101, 16, num_subspaces=4, num_centroids=8)
    else:
        knobs = {"num_subspaces": [4, 2]} if variant == "unshared_d" else {"num_subspaces": 4}
        layer = MGQEmbedding(101, 16, variant=variant, num_centroids=[8, 4], **knobs)
    layer.train()
    for ids in (torch.zeros(0, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)):
        out = layer(ids)
        aux = layer.aux_loss()
        assert out.shape == (*ids.shape, 16) and torch.all(out == 0) and float(aux.detach()) == 0.0
        loss = out.sum() + aux
        if loss.requires_grad:  # the per-tier loop of unshared variants builds no graph here
            loss.backward()
