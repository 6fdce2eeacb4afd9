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

The helpers below (``code_bits``, ``nearest_codes``, ``gather_centroids``, ``straight_through_vq``,
``distinct_ids``) are shared
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
    centroid is one of the two sorted neighbours of the query, found by a bucket grid over the
    sorted centroids (``_nearest_1d``: a few gathers per query instead of a binary search or a
    ``K``-wide distance row); ties go to the lower centroid index, like ``argmin``. Otherwise
    distances are ``|c|^2 - 2 q.c`` (``|q|^2`` is the same for every centroid) from one batched
    matrix product over all subspaces (``baddbmm``) per row chunk, the chunk bounding the
    ``(D, rows, K)`` temporary, then ``argmin``.
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


#: Grid cells per centroid of ``_nearest_1d``'s bucket grid (more cells: fewer values per cell).
_CELLS_PER_CENTROID = 8
#: Most centroid values in one grid cell before ``_nearest_1d`` falls back to a binary search.
_MAX_PER_CELL = 16


def _nearest_1d(queries: Tensor, centroids: Tensor) -> Tensor:
    """``nearest_codes`` for scalar subspaces: ``queries (B, D)``, ``centroids (D, K)`` -> ``(B, D)``.

    Exact, including ties: the result equals ``argmin`` of the squared distances (the lowest index
    among equally near centroids). How: per subspace the centroids are sorted (stably) and the
    range ``[min, max]`` is cut into ``8 K`` equal cells; ``cell(x)`` is computed by the same float
    operations for centroids and queries, so it is monotone in ``x`` and a query's position among the
    sorted values (the number of values below it) is the number of values in lower cells plus a
    comparison with each value of its own cell (at most a few). The answer is then the nearer of the
    two sorted neighbours, the lower one standing for the first (lowest-index) of its run of equal
    values. Every step is a flat gather or an elementwise pass over the ``B * D`` queries (about
    3x faster than ``searchsorted`` on 2 CPU cores, and the same code runs on CUDA); crowded cells
    (more than ``_MAX_PER_CELL`` values, e.g. many equal centroids) use ``searchsorted``.
    """
    num, k = centroids.shape
    device = centroids.device
    values, order = centroids.sort(dim=1, stable=True)
    cells = _CELLS_PER_CENTROID * k
    if values.dtype not in (torch.float32, torch.float64) or num * cells > 1 << 24:
        return _nearest_1d_searchsorted(queries, values, order)  # cell indices must be exact floats
    low = values[:, :1]
    scale = cells / (values[:, -1:] - low)
    scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
    cell_offset = (torch.arange(num, device=device, dtype=values.dtype) * cells).unsqueeze(1)

    def cell(x: Tensor) -> Tensor:
        """Flat cell index; the same (monotone) float operations for centroids and queries."""
        return ((x - low) * scale).clamp_(0, cells - 1).add_(cell_offset).to(torch.int32)

    per_cell = torch.zeros(num * cells, dtype=torch.int32, device=device)
    per_cell.index_add_(0, cell(values).view(-1), torch.ones(num * k, dtype=torch.int32, device=device))
    crowded = int(per_cell.max())
    if crowded > _MAX_PER_CELL:
        return _nearest_1d_searchsorted(queries, values, order)
    # Rows of ``padded``: +inf, the sorted values, ``crowded`` more +inf (so no index leaves its row).
    width = k + crowded + 1
    begins = per_cell.view(num, cells).cumsum(1, dtype=torch.int32) - per_cell.view(num, cells)
    begins += (torch.arange(num, device=device, dtype=torch.int32) * width + 1).unsqueeze(1)
    inf = values.new_full((num, 1), float("inf"))
    padded = torch.cat([inf, values, inf.expand(num, crowded)], 1).view(-1)
    q = queries.transpose(0, 1).contiguous().view(-1)  # subspace-major, (D * B,)
    flat_cells = cell(q.view(num, -1)).view(-1)
    index = begins.view(-1).index_select(0, flat_cells)  # first value of the query's cell
    index += padded.index_select(0, index) < q
    if crowded > 1:  # cells holding several values: advance through them for those queries only
        many = (per_cell.index_select(0, flat_cells) > 1).nonzero().view(-1)
        sub_q, sub_index = q.index_select(0, many), index.index_select(0, many)
        for _ in range(crowded - 1):
            sub_index += padded.index_select(0, sub_index) < sub_q
        index.index_copy_(0, many, sub_index)
    # ``index`` is now the first sorted value >= q (the first of its run); ``below`` the last < q.
    positions = torch.arange(k, device=device).expand(num, k)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    pad = torch.zeros(num, 1, dtype=torch.int32, device=device)
    upper_codes = torch.cat([pad, order.to(torch.int32), pad.expand(num, crowded)], 1).view(-1)
    lower_codes = order.gather(1, first).to(torch.int32)
    lower_codes = torch.cat([pad, lower_codes, pad.expand(num, crowded)], 1).view(-1)
    below = index - 1
    dist_upper = (q - padded.index_select(0, index)).pow_(2)
    dist_lower = (q - padded.index_select(0, below)).pow_(2)
    code_upper = upper_codes.index_select(0, index)
    code_lower = lower_codes.index_select(0, below)
    take_lower = (dist_lower < dist_upper) | ((dist_lower == dist_upper) & (code_lower < code_upper))
    codes = torch.where(take_lower, code_lower, code_upper)
    return codes.view(num, -1).transpose(0, 1).to(torch.int64)


def _nearest_1d_searchsorted(queries: Tensor, values: Tensor, order: Tensor) -> Tensor:
    """``_nearest_1d`` by binary search, given the stably sorted ``values`` and their ``order``."""
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
    """The chosen centroids: ``centroids (D, K, s)``, ``codes (B, D)`` -> ``(B, D, s)``.

    One flat ``index_select`` from the ``(D K, s)`` view (its backward is one ``index_add``, about
    as fast as a gather; advanced indexing's ``index_put`` and ``embedding``'s backward, which
    sorts the indices, are slower for these many short rows)."""
    num, k, s = centroids.shape
    offsets = torch.arange(0, num * k, k, device=codes.device)
    flat = (codes + offsets).reshape(-1)
    return centroids.reshape(num * k, s).index_select(0, flat).view(*codes.shape, s)


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


class _StraightThroughVQ(torch.autograd.Function):
    """``q + sg(c - q)`` and ``vq_aux_sum(q, c, beta, weights)`` in one pass (see
    ``straight_through_vq``)."""

    @staticmethod
    def forward(ctx, queries: Tensor, chosen: Tensor, weights: Tensor, beta: float):  # noqa: ANN001, ANN205
        diff = chosen - queries
        out = queries + diff
        per_row = diff.pow(2).reshape(diff.shape[0], -1).sum(1)
        aux = (per_row * weights).sum() * (1.0 + beta)
        ctx.save_for_backward(diff, weights)
        ctx.beta = beta
        return out, aux

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_aux: Tensor):  # noqa: ANN001, ANN205
        diff, weights = ctx.saved_tensors
        scale = (2.0 * grad_aux) * weights
        grad_chosen = diff * scale.view(-1, *([1] * (diff.dim() - 1)))  # codebook term
        grad_queries = grad_out - ctx.beta * grad_chosen  # identity + commitment term
        return grad_queries, grad_chosen, None, None


def straight_through_vq(
    queries: Tensor, chosen: Tensor, beta: float, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """The straight-through output ``q + sg(c - q)`` and the aux sum ``vq_aux_sum(q, c, beta,
    weights)`` (codebook + ``beta`` x commitment, weighted per row), with their gradients.

    Why a fused function: autograd of the two expressions runs about fifteen elementwise passes
    over the looked-up coordinates (each term squared twice, detached copies, their backward);
    here the forward computes ``c - q`` once and the backward is two passes. Same values and
    gradients up to float rounding (``tests/embeddings/test_dpq.py``)."""
    return _StraightThroughVQ.apply(queries, chosen, weights.to(queries.dtype), float(beta))


def distinct_ids(flat: Tensor, num_embeddings: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted distinct ids of ``flat``, the index of each entry among them, and their counts.

    Why: a training batch repeats ids (every positive and negative of a user, popular items), and a
    code depends only on the id's query row, so DPQ and MGQE search and gather once per distinct id
    and expand with one ``embedding`` lookup (5-12x fewer nearest-centroid searches on MovieLens
    batches). With ``num_embeddings`` (the ids' bound) not much larger than the batch, a
    ``bincount`` over the vocabulary replaces ``torch.unique``'s sort (about 20x faster at
    MovieLens scale); the result is the same."""
    if num_embeddings is not None and 0 < num_embeddings <= 16 * flat.numel() + 4096:
        try:
            counts = torch.bincount(flat, minlength=num_embeddings)
        except RuntimeError:  # negative ids: let the lookup raise its usual error
            return torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
        present = counts > 0
        unique = present.nonzero().view(-1)
        position = present.cumsum(0) - 1
        return unique, position[flat], counts[unique]
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
        #: Training: (version key, codes of every id) from the last whole-table decode.
        self._train_codes: tuple[Any, Tensor] | None = None

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
        unique, inverse, counts = distinct_ids(ids.reshape(-1), self.num_embeddings)
        key = version_key(self.query.weight, self.centroids)
        codes = None
        if key is not None and self._train_codes is not None and self._train_codes[0] == key:
            codes = self._train_codes[1][unique]  # the table was decoded in this step already
        out = self._train_lookup(unique, counts, codes)
        return F.embedding(inverse, out).reshape(*ids.shape, self.embedding_dim)

    def _train_lookup(self, unique: Tensor, counts: Tensor, codes: Tensor | None = None) -> Tensor:
        """Straight-through vectors ``(len(unique), d)`` of distinct ids looked up ``counts`` times,
        adding their aux loss; ``codes`` when already known (else searched)."""
        queries = self.query(unique).view(-1, self.num_subspaces, self.subspace_dim)
        if codes is None:
            codes = nearest_codes(queries, self.centroids)
        chosen = gather_centroids(self.centroids, codes)
        weights = counts * (unique != 0)  # padding rows carry no loss
        out, aux = straight_through_vq(queries, chosen, self.beta, weights)
        rows = weights.sum().clamp(min=1)
        self._add_aux(self.aux_weight * aux / (rows * self.embedding_dim))
        return self._zero_padding(unique, out.reshape(-1, self.embedding_dim))

    def full_table(self) -> Tensor:
        """Eval: the served table. Training: a straight-through lookup of every id (with its aux).

        In training the codes of every id are kept until a parameter changes, so lookups later in
        the same step (a softmax loss needs the whole table and the batch's ids) reuse them instead
        of searching again."""
        if not self.training:
            return self._served()[1]
        key = version_key(self.query.weight, self.centroids)
        if key is None or self._train_codes is None or self._train_codes[0] != key:
            queries = self.query.weight.detach().view(-1, self.num_subspaces, self.subspace_dim)
            self._train_codes = (key, nearest_codes(queries, self.centroids))
        ids = torch.arange(self.num_embeddings, device=self.query.weight.device)
        return self._train_lookup(ids, torch.ones_like(ids), self._train_codes[1])

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
