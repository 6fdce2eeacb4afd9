"""Differentiable product quantization (DPQ, Chen et al. 2020), the vector-quantization variant used by
the MGQE paper (Kang et al. 2020, section 3.3).

Training keeps a float *query* table ``n x d`` (training only, never served). A query is split into
``D`` subspaces of ``d/D`` dims; in each subspace the code is the nearest (L2) of ``K`` learnable
centroids, and the embedding is the concatenation of the chosen centroids. The argmin is bridged with
the straight-through estimator, ``out = q + sg(c - q)``: the task gradient reaches the query table,
and the centroids learn from the auxiliary VQ loss

    aux_weight * mean over (looked-up rows, dims) of  (c - sg(q))^2 + beta * (sg(c) - q)^2

(codebook term + ``beta`` x commitment term). The mean over every coordinate follows the authors'
reference implementation (``reduce_mean`` in ``kd_quantizer.py``, codebook weight 1), so the scale of the
term does not depend on ``d`` or ``D``; ``beta`` defaults to VQ-VAE's 0.25 (the authors' code leaves the
commitment term off with 0). It is added with ``_add_aux`` in training mode only; padding rows are
excluded. (The authors' code also batch-normalises the distances before its argmin; the MGQE paper
describes the plain nearest centroid, which is what this layer computes.)

Serving stores the codes (``n * D`` codes of ``ceil(log2 K)`` bits, bit-packed) and the centroids
(``32 * K * d`` bits); the query table is dropped. In eval mode ``forward``/``full_table`` return that
served table: codes of every id computed from the current query table, cached until a parameter
changes (keyed on the tensors' in-place version counters, bumped by optimizer steps and
``load_state_dict``), so evaluation sees exactly what is served and ``forward`` agrees with
``full_table`` bit for bit.

Initialisation: queries and centroids are both drawn from N(0, init_std^2) (the MGQE paper initialises
every embedding with std 0.01). Drawing centroids from the same distribution as the queries puts them
inside the cloud of query sub-vectors from the start, so nearly all of them are chosen by some id
(seeding them from random query rows would give the same distribution).

The helpers below (``code_bits``, ``nearest_codes``, ``gather_centroids``, ``vq_aux_sum``) are shared
with MGQE (``recbench.embeddings.mgqe``), which is DPQ with frequency tiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recbench.embeddings.base import CompressedEmbedding
from recbench.embeddings.packing import MAX_BITS, pack_bits, unpack_bits
from recbench.errors import ConfigError

#: Largest temporary of the distance computation, in elements (rows are processed in chunks).
_MAX_DISTANCE_ELEMENTS = 1 << 24


def code_bits(num_centroids: int) -> int:
    """Bits of one code, ``ceil(log2 K)`` (exact integer arithmetic)."""
    return (int(num_centroids) - 1).bit_length()


def nearest_codes(queries: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared L2) in each subspace; no gradient.

    ``queries``: ``(B, D, s)``; ``centroids``: ``(D, K, s)``. Returns ``(B, D)`` int64.

    Why two paths: with one-dimensional subspaces (``s = 1``, the paper's ``D = d = 64``) the nearest
    centroid is one of the two sorted neighbours of the query, so a sort of the ``K`` centroids and a
    binary search cost ``O(B D log K)`` instead of the ``O(B D K)`` distance matrix; ties go to the
    lower centroid index, like ``argmin``. Otherwise distances are ``|c|^2 - 2 q.c`` (``|q|^2`` is the
    same for every centroid) from one batched matrix product per row chunk, the chunk bounding the
    ``(D, rows, K)`` temporary.
    """
    with torch.no_grad():
        queries, centroids = queries.detach(), centroids.detach()
        if queries.shape[0] == 0:
            return torch.empty(0, centroids.shape[0], dtype=torch.int64, device=queries.device)
        if centroids.shape[2] == 1:
            return _nearest_1d(queries[..., 0], centroids[..., 0])
        squared = centroids.pow(2).sum(-1).unsqueeze(1)  # (D, 1, K)
        transposed = centroids.transpose(1, 2)  # (D, s, K)
        chunk = max(1, _MAX_DISTANCE_ELEMENTS // max(1, centroids.shape[0] * centroids.shape[1]))
        parts = []
        for start in range(0, queries.shape[0], chunk):
            block = queries[start : start + chunk].transpose(0, 1)  # (D, b, s)
            distances = torch.baddbmm(squared, block, transposed, alpha=-2.0)  # (D, b, K)
            parts.append(distances.argmin(-1).transpose(0, 1))
        return torch.cat(parts)


def _nearest_1d(queries: Tensor, centroids: Tensor) -> Tensor:
    """``nearest_codes`` for scalar subspaces: ``queries (B, D)``, ``centroids (D, K)`` -> ``(B, D)``.

    Candidates are the sorted neighbours of each query; among equal centroid values the lowest
    original index is taken (the stable sort keeps equal values in index order, and ``first`` maps
    each sorted position to the first position of its run of equal values), so the result equals
    ``argmin`` of the distances, ties included. One ``searchsorted`` per call: it is the cost.
    """
    values, order = centroids.sort(dim=1, stable=True)
    values = values.contiguous()
    num = values.shape[1]
    positions = torch.arange(num, device=values.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    q = queries.transpose(0, 1).contiguous()  # (D, B)
    position = torch.searchsorted(values, q)  # first sorted value >= q (the first of its run)
    upper = position.clamp(max=num - 1)
    lower = first.gather(1, (position - 1).clamp(min=0))
    dist_upper = (q - values.gather(1, upper)).pow(2)
    dist_lower = (q - values.gather(1, lower)).pow(2)
    index_upper, index_lower = order.gather(1, upper), order.gather(1, lower)
    take_lower = (dist_lower < dist_upper) | ((dist_lower == dist_upper) & (index_lower < index_upper))
    return torch.where(take_lower, index_lower, index_upper).transpose(0, 1)


def gather_centroids(centroids: Tensor, codes: Tensor) -> Tensor:
    """The chosen centroids: ``centroids (D, K, s)``, ``codes (B, D)`` -> ``(B, D, s)``."""
    subspace = torch.arange(centroids.shape[0], device=codes.device)
    return centroids[subspace.unsqueeze(0), codes]


def vq_aux_sum(queries: Tensor, chosen: Tensor, beta: float, weights: Tensor | None = None) -> Tensor:
    """Sum over coordinates of ``(c - sg(q))^2 + beta * (sg(c) - q)^2`` (codebook + commitment).

    ``weights`` (one per row) count how often each distinct row was looked up, so a batch reduced
    to its distinct ids gives the same loss and gradients as the batch itself."""
    codebook = (chosen - queries.detach()).pow(2)
    commitment = (chosen.detach() - queries).pow(2)
    per_row = (codebook + beta * commitment).reshape(codebook.shape[0], -1).sum(1)
    if weights is not None:
        per_row = per_row * weights.to(per_row.dtype)
    return per_row.sum()


def distinct_ids(flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted distinct ids of ``flat``, the index of each entry among them, and their counts.

    Why: a training batch repeats ids (every positive and negative of a user, popular items), and a
    code depends only on the id's query row, so DPQ and MGQE search and gather once per distinct id
    and expand with one ``embedding`` lookup (5-12x fewer nearest-centroid searches on MovieLens
    batches)."""
    return torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)


def version_key(*tensors: Tensor) -> tuple[Any, ...] | None:
    """Identity, device and in-place version of ``tensors``; None when one is untracked (inference
    tensors), which disables caching instead of risking a stale table."""
    key: list[Any] = []
    for tensor in tensors:
        try:
            version = tensor._version
        except RuntimeError:
            return None
        key.append((id(tensor), tensor.data_ptr(), tensor.device, tuple(tensor.shape), version))
    return tuple(key)


def check_common_knobs(knobs: Mapping[str, Any]) -> None:
    """``beta``, ``aux_weight`` and ``init_std`` of DPQ and MGQE."""
    for name, default in (("beta", 0.25), ("aux_weight", 1.0)):
        value = knobs.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"method.{name}={value} must be a number >= 0; use e.g. {default}")
    init_std = knobs.get("init_std", 0.01)
    if not isinstance(init_std, int | float) or init_std <= 0:
        raise ConfigError(f"method.init_std={init_std} must be > 0; use e.g. 0.01")


def check_num_centroids(value: Any, where: str = "method.num_centroids") -> int:
    """One ``K``: an int in 2..65536 (codes of 1..16 bits)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 1 << MAX_BITS:
        raise ConfigError(
            f"{where}={value} must be an integer in 2..{1 << MAX_BITS} (codes of 1..{MAX_BITS} "
            "bits); use e.g. 256"
        )
    return value


def check_num_subspaces(value: Any, embedding_dim: int, where: str = "method.num_subspaces") -> int:
    """One ``D``: a positive int dividing ``embedding_dim`` (subspaces of ``d/D`` dims)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or embedding_dim % value:
        divisors = [k for k in range(1, embedding_dim + 1) if embedding_dim % k == 0]
        raise ConfigError(
            f"{where}={value} must divide embedding_dim={embedding_dim}; use one of "
            f"{', '.join(map(str, divisors))}"
        )
    return value


def divisors_descending(n: int) -> list[int]:
    """Divisors of ``n`` from largest to smallest (the candidate numbers of subspaces)."""
    return [k for k in range(n, 0, -1) if n % k == 0]


def as_list(value: Any) -> list[Any] | None:
    """A YAML list (list, tuple, ListConfig) as a plain list; None for a scalar."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return None


class DPQEmbedding(CompressedEmbedding):
    """DPQ-VQ: ``D`` subspaces with ``K`` centroids each; serves ``n*D*ceil(log2 K) + 32*K*d`` bits."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        num_subspaces: int = 64,
        num_centroids: int = 256,
        beta: float = 0.25,
        aux_weight: float = 1.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts)
        self.check_knobs(
            embedding_dim,
            num_subspaces=num_subspaces,
            num_centroids=num_centroids,
            beta=beta,
            aux_weight=aux_weight,
            init_std=init_std,
        )
        self.num_subspaces = int(num_subspaces)
        self.num_centroids = int(num_centroids)
        self.beta = float(beta)
        self.aux_weight = float(aux_weight)
        self.init_std = float(init_std)
        self.subspace_dim = self.embedding_dim // self.num_subspaces
        self.query = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=0)
        nn.init.normal_(self.query.weight, std=self.init_std)
        with torch.no_grad():
            self.query.weight[0].zero_()
        self.centroids = nn.Parameter(
            torch.randn(self.num_subspaces, self.num_centroids, self.subspace_dim) * self.init_std
        )
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ knobs
    @classmethod
    def check_knobs(cls, embedding_dim: int, **knobs: Any) -> None:
        check_num_subspaces(knobs.get("num_subspaces", 64), embedding_dim)
        check_num_centroids(knobs.get("num_centroids", 256))
        check_common_knobs(knobs)

    def knobs(self) -> dict[str, Any]:
        return {
            "num_subspaces": self.num_subspaces,
            "num_centroids": self.num_centroids,
            "beta": self.beta,
            "aux_weight": self.aux_weight,
            "init_std": self.init_std,
        }

    # ------------------------------------------------------------ served form
    def codes(self) -> Tensor:
        """``(n, D)`` codes of the real ids from the current query table (cached)."""
        return self._served()[0]

    def _served(self) -> tuple[Tensor, Tensor]:
        """Codes of the real ids and the served ``(n + 1, d)`` table (row 0 zeros), cached until the
        query table or the centroids change."""
        key = version_key(self.query.weight, self.centroids)
        if key is not None and key == self._cache_key and self._cache is not None:
            return self._cache
        with torch.no_grad():
            queries = self.query.weight[1:].detach().view(-1, self.num_subspaces, self.subspace_dim)
            codes = nearest_codes(queries, self.centroids)
            table = gather_centroids(self.centroids.detach(), codes).reshape(-1, self.embedding_dim)
            table = torch.cat([table.new_zeros(1, self.embedding_dim), table])
        self._cache_key, self._cache = key, (codes, table)
        return codes, table

    # ---------------------------------------------------------------- contract
    def forward(self, ids: Tensor) -> Tensor:
        if not self.training:
            return self._served()[1][ids]
        flat = ids.reshape(-1)
        unique, inverse, counts = distinct_ids(flat)
        queries = self.query(unique).view(-1, self.num_subspaces, self.subspace_dim)
        codes = nearest_codes(queries, self.centroids)
        chosen = gather_centroids(self.centroids, codes)
        out = queries + (chosen - queries).detach()  # straight-through estimator
        weights = counts * (unique != 0)  # padding rows carry no loss
        aux = vq_aux_sum(queries, chosen, self.beta, weights)
        rows = weights.sum().clamp(min=1)
        self._add_aux(self.aux_weight * aux / (rows * self.embedding_dim))
        out = self._zero_padding(unique, out.reshape(-1, self.embedding_dim))
        return F.embedding(inverse, out).reshape(*ids.shape, self.embedding_dim)

    def full_table(self) -> Tensor:
        """Eval: the served table. Training: a straight-through lookup of every id (with its aux)."""
        if not self.training:
            return self._served()[1]
        return super().full_table()

    def serving_bits(self) -> int:
        return (
            self.num_ids * self.num_subspaces * code_bits(self.num_centroids)
            + 32 * self.num_centroids * self.embedding_dim
        )

    def serving_tensors(self) -> dict[str, Tensor]:
        codes, _ = self._served()
        return {
            "codes": pack_bits(codes, code_bits(self.num_centroids)).cpu(),
            "centroids": self.centroids.detach().to(torch.float32).cpu().contiguous(),
        }

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        n, d = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"])
        num_subspaces, num_centroids = int(meta["num_subspaces"]), int(meta["num_centroids"])
        codes = unpack_bits(tensors["codes"], code_bits(num_centroids), n * num_subspaces)
        centroids = tensors["centroids"].to(torch.float32)
        table = gather_centroids(centroids, codes.view(n, num_subspaces).to(centroids.device))
        return torch.cat([centroids.new_zeros(1, d), table.reshape(n, d)])

    @classmethod
    def codes_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        """Codes of ids 1..n as an ``(n, D)`` int64 matrix, for comparing items by codes."""
        n, num_subspaces = int(meta["num_embeddings"]) - 1, int(meta["num_subspaces"])
        codes = unpack_bits(tensors["codes"], code_bits(int(meta["num_centroids"])), n * num_subspaces)
        return codes.view(n, num_subspaces).to(torch.int64)

    # ------------------------------------------------------------ equal memory
    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Choose ``num_subspaces``: ``K`` stays as configured (the MGQE paper varies ``D`` for
        smaller models, Figure 6) and ``D`` is the largest divisor of ``d`` that fits the budget."""
        num_centroids = check_num_centroids(knobs.get("num_centroids", 256))
        n, d = int(num_ids), int(embedding_dim)
        full = 32 * n * d

        def bits(subspaces: int) -> int:
            return n * subspaces * code_bits(num_centroids) + 32 * num_centroids * d

        for subspaces in divisors_descending(d):
            if bits(subspaces) <= budget * full:
                return {**knobs, "num_subspaces": subspaces}
        smallest = bits(1) / full
        raise ConfigError(
            f"method.budget={budget} is below the smallest {cls.__name__} size ({smallest:.6f} of "
            f"full at num_subspaces=1, num_centroids={num_centroids}); use method.budget >= "
            f"{math.ceil(smallest * 1e6) / 1e6} or fewer method.num_centroids"
        )
