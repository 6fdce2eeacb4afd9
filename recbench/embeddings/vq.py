"""Vector quantization shared by DPQ (``recbench.embeddings.dpq``) and MGQE (``mgqe``).

Both methods keep a float *query* table ``n x d`` for training (never served), split a query into
``D`` subspaces of ``s = d/D`` dims, replace each sub-vector by the nearest (L2) of ``K`` learnable
centroids, and serve the codes (``ceil(log2 K)`` bits each, bit-packed) plus the centroids. What
differs is only how ids map to centroid tables: DPQ has one, MGQE one per frequency tier (or a
prefix of a shared one). This module holds everything else, so ``dpq.py`` and ``mgqe.py`` hold only
what is their own:

* the nearest-centroid search (``nearest_codes`` / ``nearest_centroids``), exact ``argmin`` of the
  squared distances with ties to the lowest index;
* the straight-through estimator fused with the gather and the auxiliary VQ loss (``quantize``);
* ``VQEmbedding``, the base class: query table and its initialisation, distinct-id training
  lookups, the eval-mode served table cached until a parameter changes, the once-per-step
  whole-table decode for softmax losses, and the aux-loss normalisation;
* code width (``code_bits``), distinct ids, the version key of the caches, and the knob checks
  common to both methods.

Why the scalar search is written as it is (the paper's ``D = d``, ``s = 1``; ``_ScalarGrid``): a
``K``-wide distance row per query costs ``K`` times the work, and ``searchsorted`` is a binary search
of ~60 ns per query on these CPUs. Instead, per subspace the centroids are sorted and the range
``[min, max]`` is cut into ``8 K`` equal cells; a query's cell (computed by the same float operations
as the centroids' cells, so it is monotone in the value) gives its position among the sorted values
with one gather and one comparison (a few more for the rare crowded cell). The nearer of the two
sorted neighbours is then chosen by comparing the bit patterns of the two squared distances (for
non-negative floats the integer order is the float order), the tie bit of the position (does the
lower neighbour have the lower index?) folded into that integer comparison, so the whole search is
flat gathers and integer/float passes over the ``B x D`` queries, with no ``where`` and no sort of
the queries. The result equals ``argmin`` bit for bit, ties included
(``tests/embeddings/test_vq.py``). Subspaces of several dimensions use ``|c|^2 - 2 q.c`` from one
batched matrix product (``baddbmm``) per row chunk, then ``argmin``.

With ``train.fused_vq=true`` (``use_fused_search``) the scalar float32 CPU search runs instead as
one compiled C loop (``recbench.embeddings.vq_kernel``): the same structure and decision rule, so
the same codes and values bit for bit, in well under half the time; everything else stays here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from recbench.embeddings import vq_kernel
from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.packing import MAX_BITS
from recbench.errors import ConfigError

log = logging.getLogger(__name__)

#: Largest temporary of the matrix-product distance computation, in elements (rows are chunked).
_MAX_DISTANCE_ELEMENTS = 1 << 24
#: Grid cells per centroid of the scalar search (more cells: fewer values per cell, larger grid).
_CELLS_PER_CENTROID = 8
#: Most centroid values in one grid cell before the scalar search falls back to a binary search.
_MAX_PER_CELL = 16


def code_bits(num_centroids: int) -> int:
    """Bits of one code, ``ceil(log2 K)`` (exact integer arithmetic)."""
    return (int(num_centroids) - 1).bit_length()


# ----------------------------------------------------------------------------- nearest centroid
def nearest_codes(queries: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared L2) in each subspace; no gradient.

    ``queries``: ``(B, D, s)``; ``centroids``: ``(D, K, s)``. Returns ``(B, D)`` int64; ties go to
    the lowest index, like ``argmin``."""
    codes, _ = nearest_centroids(queries, centroids, values=False)
    return codes.to(torch.int64)


def nearest_centroids(
    queries: Tensor, centroids: Tensor, *, values: bool = True, fused: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Codes ``(B, D)`` (int32 or int64) of the nearest centroids and, with ``values``, the chosen
    centroids ``(B, D, s)`` themselves (no gradient; bit-equal to ``gather_centroids``).

    Why both: the scalar search finds the chosen value on the way, so training and the served
    table skip a separate gather. ``fused``: scalar float32 CPU searches run in the compiled C
    loop of ``recbench.embeddings.vq_kernel`` (``train.fused_vq``; the same codes and values)."""
    with torch.no_grad():
        queries, centroids = queries.detach(), centroids.detach()
        num, _, s = centroids.shape
        if queries.shape[0] == 0:
            codes = torch.empty(0, num, dtype=torch.int64, device=queries.device)
            return codes, (queries.new_empty(0, num, s) if values else None)
        if fused and vq_kernel.applies(queries, centroids):
            found = vq_kernel.search(queries, centroids)
            if found is not None:
                return found[0], (found[1] if values else None)
        if s == 1:
            grid = _ScalarGrid.build(centroids[..., 0])
            if grid is not None:
                codes, chosen = grid.search(queries[..., 0], values)
                chosen = None if chosen is None else chosen.view(queries.shape)
                return codes.view(queries.shape[:2]), chosen
            codes = _nearest_1d_searchsorted(queries[..., 0], centroids[..., 0])
        else:
            codes = _nearest_matmul(queries, centroids)
        return codes, (gather_centroids(centroids, codes) if values else None)


def _nearest_matmul(queries: Tensor, centroids: Tensor) -> Tensor:
    """``argmin`` of ``|c|^2 - 2 q.c`` (``|q|^2`` is the same for every centroid): one batched
    matrix product over all subspaces per row chunk, the chunk bounding the ``(D, rows, K)``
    temporary."""
    squared = centroids.pow(2).sum(-1).unsqueeze(1)  # (D, 1, K)
    transposed = centroids.transpose(1, 2)  # (D, s, K)
    chunk = max(1, _MAX_DISTANCE_ELEMENTS // max(1, centroids.shape[0] * centroids.shape[1]))
    parts = []
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk].transpose(0, 1)  # (D, b, s)
        distances = torch.baddbmm(squared, block, transposed, alpha=-2.0)  # (D, b, K)
        parts.append(distances.argmin(-1).transpose(0, 1))
    return torch.cat(parts)


class _ScalarGrid(NamedTuple):
    """The scalar-subspace search structure of one ``(D, K)`` centroid table (module docstring).

    Flat tables over ``D`` rows of ``width = K + crowded + 1`` positions: position ``1 + p`` of
    row ``j`` stands for "``p`` sorted values of subspace ``j`` lie below the query"; ``values``
    holds the sorted values (``+inf`` at the row's first and last slots), ``below`` the value one
    position lower, ``codes`` the code of each sorted value (the lowest index among equal values),
    ``tie`` 1 where the lower neighbour wins an exact tie, ``begins`` per grid cell the position of
    its first value, ``shared`` whether a cell holds several values."""

    low: Tensor  # (D,) smallest value per subspace
    scale: Tensor  # (D,) cells per unit
    cell_offset: Tensor  # (D,) first flat cell of each subspace
    cells: int
    begins: Tensor  # (D * cells,) int32
    shared: Tensor  # (D * cells,) bool: the cell holds several values
    crowded: int
    values: Tensor  # (D * width,)
    below: Tensor  # (D * width,)
    codes: Tensor  # (D * width,) int32
    tie: Tensor  # (D * width,) int32

    @staticmethod
    def build(centroids: Tensor) -> _ScalarGrid | None:
        """The grid of ``centroids (D, K)``; None when it cannot be exact (not float32/64, a grid
        over 2^24 cells, or a cell holding more than ``_MAX_PER_CELL`` values).

        The sorted order comes from the grid itself (a counting sort: a value's position is the
        number of values in lower cells plus its rank among the few values of its own cell, by
        value then index), about 10x cheaper than ``torch.sort`` for 64 x 256 values, and the same
        order as a stable sort."""
        num, k = centroids.shape
        device = centroids.device
        cells = _CELLS_PER_CENTROID * k
        if centroids.dtype not in (torch.float32, torch.float64) or num * cells > 1 << 24:
            return None  # cell indices must be exact floats
        low = centroids.amin(1, keepdim=True)
        scale = cells / (centroids.amax(1, keepdim=True) - low)
        scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
        cell_offset = (torch.arange(num, device=device, dtype=centroids.dtype) * cells).unsqueeze(1)
        value_cells = _cells(centroids, low, scale, cells, cell_offset).view(-1)
        ones = torch.ones(1, dtype=torch.int32, device=device).expand(num * k)
        per_cell = torch.zeros(num * cells, dtype=torch.int32, device=device)
        per_cell.index_add_(0, value_cells, ones)
        crowded = int(per_cell.max())
        if crowded > _MAX_PER_CELL:
            return None
        width = k + crowded + 1
        row_start = (torch.arange(num, device=device, dtype=torch.int32) * width + 1).unsqueeze(1)
        per_row = per_cell.view(num, cells)
        begins = (per_row.cumsum(1, dtype=torch.int32) - per_row + row_start).view(-1)
        position = begins.index_select(0, value_cells).to(torch.int64)
        flat_values = centroids.reshape(-1)
        if crowded > 1:  # rank the values of shared cells by (cell, value, index)
            shared = (per_cell.index_select(0, value_cells) > 1).nonzero().view(-1)
            shared_cells = value_cells.index_select(0, shared)
            shared_values = flat_values.index_select(0, shared)
            key = _order_key(shared_values)
            if key is None:  # float64: two stable sorts
                by_value = shared_values.argsort(stable=True)
                by_cell = shared_cells.index_select(0, by_value).argsort(stable=True)
                order = by_value.index_select(0, by_cell)
            else:  # one stable sort of (cell, value) packed into an int64
                order = (shared_cells.to(torch.int64) << 32 | key).argsort(stable=True)
            shared, shared_cells = (
                shared.index_select(0, order),
                shared_cells.index_select(0, order),
            )
            rank = torch.arange(len(shared), device=device)
            new_cell = torch.ones_like(shared, dtype=torch.bool)
            new_cell[1:] = shared_cells[1:] != shared_cells[:-1]
            rank -= torch.where(new_cell, rank, torch.zeros_like(rank)).cummax(0).values
            position.index_add_(0, shared, rank)
        inf = torch.tensor(float("inf"), dtype=centroids.dtype, device=device)
        padded = inf.expand(num * width).clone().index_copy_(0, position, flat_values)
        padded = padded.view(num, width)
        codes = torch.zeros(num * width, dtype=torch.int32, device=device)
        indices = torch.arange(k, device=device, dtype=torch.int32).repeat(num)
        codes = codes.index_copy_(0, position, indices).view(num, width)
        # The code of a sorted value is the first (lowest-index) of its run of equal values.
        inner = padded[:, 1 : k + 1]
        starts = torch.ones_like(inner, dtype=torch.bool)
        starts[:, 1:] = inner[:, 1:] != inner[:, :-1]
        if not bool(starts.all()):
            positions = torch.arange(k, device=device).expand(num, k)
            first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
            codes[:, 1 : k + 1] = codes[:, 1 : k + 1].gather(1, first)
        below = torch.cat([inf.expand(num, 1), padded[:, :-1]], 1)
        tie = torch.ones(num, width, dtype=torch.int32, device=device)
        tie[:, 1] = 0  # no value below: the upper one (if any) wins
        tie[:, 2 : k + 1] = (codes[:, 1:k] < codes[:, 2 : k + 1]).to(torch.int32)
        return _ScalarGrid(
            low.view(-1), scale.view(-1), cell_offset.view(-1), cells, begins, per_cell > 1, crowded,
            padded.reshape(-1), below.reshape(-1), codes.reshape(-1), tie.reshape(-1),
        )  # fmt: skip

    def search(self, queries: Tensor, values: bool = True) -> tuple[Tensor, Tensor | None]:
        """Codes ``(B * D,)`` int32 of the nearest centroids of ``queries (B, D)`` and, with
        ``values``, the chosen values.

        Why the ``out=`` buffers: every fresh tensor of this size costs page faults (the
        allocator returns such blocks to the system), as much as the pass that fills it; three
        buffers are reused here instead of a dozen temporaries (float32; float64 allocates)."""
        q = queries.contiguous()
        scratch = (q - self.low).view(-1)  # float buffer: cells, then gathered values
        cell = scratch.view(q.shape).mul_(self.scale).clamp_(0, self.cells - 1)
        cell = cell.add_(self.cell_offset).to(torch.int32).view(-1)
        q = q.view(-1)
        index = self.begins.index_select(0, cell)  # the first value of the query's cell
        flags = torch.lt(torch.index_select(self.values, 0, index, out=scratch), q)
        index += flags
        if self.crowded > 1:  # cells holding several values: advance through them for those only
            many = torch.index_select(self.shared, 0, cell, out=flags).nonzero().view(-1)
            sub_q, sub_index = q.index_select(0, many), index.index_select(0, many)
            for _ in range(self.crowded - 1):
                sub_index += self.values.index_select(0, sub_index) < sub_q
            index.index_copy_(0, many, sub_index)
        # ``index``: the first sorted value >= q; the lower neighbour is one position down. Take
        # it when its squared distance is smaller, or equal and its tie bit is set: for
        # non-negative floats, ``bits(lower) - bits(upper) < tie`` says exactly that.
        exact32 = q.dtype == torch.float32
        upper = torch.index_select(self.values, 0, index, out=scratch)
        upper = torch.sub(q, upper, out=upper).square_()
        lower = (
            torch.index_select(self.below, 0, index, out=cell.view(q.dtype)) if exact32 else None
        )
        lower = (q - self.below.index_select(0, index)) if lower is None else lower.neg_().add_(q)
        lower.square_()
        ints = torch.int32 if exact32 else torch.int64
        take_lower = lower.view(ints).sub_(upper.view(ints))
        take_lower -= self.tie.index_select(0, index)
        take_lower >>= take_lower.element_size() * 8 - 1  # -1 where negative, else 0
        index += take_lower
        codes = torch.index_select(self.codes, 0, index, out=take_lower) if exact32 else None
        codes = self.codes.index_select(0, index) if codes is None else codes
        chosen = torch.index_select(self.values, 0, index, out=upper) if values else None
        return codes, chosen


def _order_key(values: Tensor) -> Tensor | None:
    """float32 values as non-negative int64 keys in the same order, equal values (``-0.0`` and
    ``0.0`` included) equal keys, for packing into one sort key; None for other dtypes."""
    if values.dtype != torch.float32:
        return None
    bits = (values + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into 0.0
    return torch.where(bits < 0, -1 - bits, bits + (1 << 31))


def _cells(x: Tensor, low: Tensor, scale: Tensor, cells: int, offset: Tensor) -> Tensor:
    """Flat grid cell of each value; the same (monotone) float operations for centroids and
    queries, whatever the layout (``low``/``scale``/``offset`` broadcast over ``x``'s last dim, or
    are columns for a ``(D, K)`` table)."""
    return (x - low).mul_(scale).clamp_(0, cells - 1).add_(offset).to(torch.int32)


def _nearest_1d_searchsorted(queries: Tensor, centroids: Tensor) -> Tensor:
    """Scalar search by binary search (the fallback of ``_ScalarGrid``): ``queries (B, D)``,
    ``centroids (D, K)`` -> ``(B, D)`` codes, ties to the lowest index."""
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
    take_lower = (dist_lower < dist_upper) | (
        (dist_lower == dist_upper) & (index_lower < index_upper)
    )
    return torch.where(take_lower, index_lower, index_upper).transpose(0, 1)


def gather_centroids(centroids: Tensor, codes: Tensor) -> Tensor:
    """The chosen centroids: ``centroids (D, K, s)``, ``codes (B, D)`` -> ``(B, D, s)``.

    One flat ``index_select`` (its backward is one ``index_add``); with ``s = 1`` from the 1-D
    view, about 4x faster than rows of one value."""
    num, k, s = centroids.shape
    flat = flat_codes(codes, k)
    if s == 1:
        return centroids.reshape(-1).index_select(0, flat).view(*codes.shape, 1)
    return centroids.reshape(num * k, s).index_select(0, flat).view(*codes.shape, s)


def flat_codes(codes: Tensor, num_centroids: int) -> Tensor:
    """Codes ``(B, D)`` as flat indices into the ``(D * K)`` rows of a centroid table."""
    offsets = torch.arange(0, codes.shape[1] * num_centroids, num_centroids, device=codes.device)
    return (codes + offsets.to(codes.dtype)).reshape(-1)


# ----------------------------------------------------------------------------- straight-through
def vq_aux_sum(
    queries: Tensor, chosen: Tensor, beta: float, weights: Tensor | None = None
) -> Tensor:
    """Sum over coordinates of ``(c - sg(q))^2 + beta * (sg(c) - q)^2`` (codebook + commitment),
    written with autograd: the reference the fused functions are tested against.

    ``weights`` (one per row) count how often each distinct row was looked up, so a batch reduced
    to its distinct ids gives the same loss and gradients as the batch itself."""
    codebook = (chosen - queries.detach()).pow(2)
    commitment = (chosen.detach() - queries).pow(2)
    per_row = (codebook + beta * commitment).reshape(codebook.shape[0], -1).sum(1)
    if weights is not None:
        per_row = per_row * weights.to(per_row.dtype)
    return per_row.sum()


class _StraightThroughVQ(torch.autograd.Function):
    """``q + sg(c - q)`` and ``vq_aux_sum(q, c, beta, weights)`` in one pass, the chosen centroids
    ``c`` given as a tensor (``straight_through_vq``) or as flat indices into a centroid table
    (``quantize``: then the backward is one ``index_add`` into the table per segment).

    ``segments`` (row bounds ``[0, ..., b]``): groups of rows whose aux sums and table gradients
    are summed separately and then added, in the order a loop of one call per group would add
    them, so that batching MGQE's tiers into one call changes no bit."""

    @staticmethod
    def forward(ctx, queries, chosen, centroids, flat, weights, beta, keep_first, segments):  # noqa: ANN001, ANN205
        diff = chosen - queries
        out = queries + diff
        if keep_first is not None and out.shape[0]:
            out[:1] *= keep_first  # the padding id (sorted first) maps to zeros
        per_row = diff.pow(2).flatten(1).sum(1)
        if segments is None:
            aux = (per_row * weights).sum() * (1.0 + beta)
        else:
            aux = per_row.new_zeros(())
            for start, end in zip(segments[:-1], segments[1:]):
                aux = aux + (per_row[start:end] * weights[start:end]).sum() * (1.0 + beta)
        ctx.save_for_backward(diff, weights, flat, keep_first)
        ctx.beta, ctx.segments = beta, segments
        ctx.table_shape = None if centroids is None else centroids.shape
        return out, aux

    @staticmethod
    def backward(ctx, grad_out, grad_aux):  # noqa: ANN001, ANN205
        diff, weights, flat, keep_first = ctx.saved_tensors
        scale = (2.0 * grad_aux) * weights
        grad_chosen = diff * scale.view(-1, *([1] * (diff.dim() - 1)))  # codebook term
        grad_queries = grad_out - ctx.beta * grad_chosen  # identity + commitment term
        if keep_first is not None and grad_queries.shape[0]:
            grad_queries[:1] *= keep_first
        if ctx.table_shape is None:
            return grad_queries, grad_chosen, None, None, None, None, None, None
        num, k, s = ctx.table_shape
        rows = grad_chosen.reshape(-1) if s == 1 else grad_chosen.reshape(-1, s)
        shape = (num * k,) if s == 1 else (num * k, s)
        per = rows.shape[0] // max(1, diff.shape[0])  # entries of ``flat`` per row (D)
        bounds = ctx.segments if ctx.segments and len(ctx.segments) > 1 else [0, diff.shape[0]]
        grad_table = None
        for start, end in zip(bounds[:-1], bounds[1:]):
            part = rows.new_zeros(shape).index_add_(
                0, flat[start * per : end * per], rows[start * per : end * per]
            )
            grad_table = part if grad_table is None else grad_table + part
        return grad_queries, None, grad_table.view(num, k, s), None, None, None, None, None


def straight_through_vq(
    queries: Tensor, chosen: Tensor, beta: float, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """The straight-through output ``q + sg(c - q)`` and the aux sum ``vq_aux_sum(q, c, beta,
    weights)`` (codebook + ``beta`` x commitment, weighted per row), with their gradients.

    Why a fused function: autograd of the two expressions runs about fifteen elementwise passes
    over the looked-up coordinates; here the forward computes ``c - q`` once and the backward is
    two passes. Same values and gradients up to float rounding (``tests/embeddings/test_vq.py``)."""
    return _StraightThroughVQ.apply(
        queries, chosen, None, None, weights.to(queries.dtype), float(beta), None, None
    )


def quantize(
    queries: Tensor,
    centroids: Tensor,
    codes: Tensor,
    beta: float,
    weights: Tensor,
    chosen: Tensor | None = None,
    padding_first: Tensor | None = None,
    segments: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Training lookup of distinct rows: ``queries (b, D, s)`` with their nearest ``codes (b, D)``
    -> straight-through vectors ``(b, D, s)`` and their weighted aux sum (``straight_through_vq``).

    One autograd node covers the gather, the straight-through output and the aux loss; its
    backward adds the codebook gradient into the centroid table with one ``index_add``, which is
    what the backward of a separate gather would do, in the same order. ``chosen``: the centroids
    of ``codes`` when the search returned them (else gathered here); ``padding_first``: a bool
    tensor of one element, true when row 0 is the padding id, whose output is then zeros;
    ``segments``: row bounds of groups summed separately (``_StraightThroughVQ``)."""
    if chosen is None:
        chosen = gather_centroids(centroids.detach(), codes)
    flat = flat_codes(codes, centroids.shape[1])
    keep = None if padding_first is None else (~padding_first).to(queries.dtype)
    return _StraightThroughVQ.apply(
        queries, chosen, centroids, flat, weights.to(queries.dtype), float(beta), keep,
        None if segments is None else list(segments),
    )  # fmt: skip


# ----------------------------------------------------------------------------- batches and caches
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
        return unique, position.index_select(0, flat), counts.index_select(0, unique)
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


# ----------------------------------------------------------------------------- knob checks
@dataclass(frozen=True)
class VQKnobs(Knobs):
    """The knobs DPQ and MGQE share (their knob dataclasses add the centroid layout)."""

    beta: float = 0.25  # weight of the commitment term inside the aux loss (VQ-VAE: 0.25)
    aux_weight: float = 1.0  # weight of the whole aux VQ loss
    init_std: float = 0.01  # std of the N(0, std^2) initialisation of queries and centroids

    def validate(self, embedding_dim: int) -> None:
        """``beta`` and ``aux_weight`` >= 0, ``init_std`` > 0."""
        defaults = {f.name: f.default for f in fields(VQKnobs)}
        for name in ("beta", "aux_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"method.{name}={value} must be a number >= 0; use e.g. {defaults[name]}"
                )
        init_std = self.init_std
        if not isinstance(init_std, int | float) or init_std <= 0:
            raise ConfigError(
                f"method.init_std={init_std} must be > 0; use e.g. {defaults['init_std']}"
            )


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


def centroid_ladder(num_centroids: int) -> list[int]:
    """The ``K`` a budget solver tries, in order of preference: the configured ``K``, then the
    powers of two below it down to 2 (``256 -> 256, 128, ..., 2``; ``200 -> 200, 128, ..., 2``).

    Why powers of two: a code takes ``ceil(log2 K)`` bits, so between two powers of two a smaller
    ``K`` saves only centroids, never code bits."""
    k = int(num_centroids)
    return [k, *(1 << b for b in range(code_bits(k) - 1, 0, -1) if 1 << b < k)]


def fits_best(candidates: Iterable[tuple[int, Any]], limit: float) -> tuple[int, Any] | None:
    """The ``(bits, knobs)`` candidate with the most bits not above ``limit``; on equal bits the
    earlier one (candidates come in order of preference). None when none fits."""
    best: tuple[int, Any] | None = None
    for bits, chosen in candidates:
        if bits <= limit and (best is None or bits > best[0]):
            best = (bits, chosen)
    return best


def as_list(value: Any) -> list[Any] | None:
    """A YAML list (list, tuple, ListConfig) as a plain list; None for a scalar."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return None


# ----------------------------------------------------------------------------- base class
class VQEmbedding(CompressedEmbedding):
    """What DPQ and MGQE share: the query table, training lookups of distinct ids through
    ``quantize``, and the served table.

    Subclasses define how ids map to centroid tables with three methods: ``_centroid_tensors``
    (what the caches are keyed on), ``_search_all`` (codes of every id and the served rows, no
    gradient) and ``_train_lookup`` (straight-through vectors of sorted distinct ids, given their
    counts and, when known, the codes of every id; it returns the aux sum too).

    In eval mode ``forward``/``full_table`` return the served table, cached until a parameter
    changes (keyed on the tensors' in-place version counters, bumped by optimizer steps and
    ``load_state_dict``), so evaluation sees exactly what is served. In training ``full_table`` keeps
    the codes of every id until a parameter changes, so lookups later in the same step (a softmax
    loss needs the whole table and the batch's ids) reuse them instead of searching again.
    """

    knob_type: ClassVar[type[Knobs]] = VQKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        """The base parses and checks the knobs (``knob_type``) and sets ``beta``,
        ``aux_weight``, ``init_std`` and the subclass's own knobs as attributes."""
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.query = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=0)
        nn.init.normal_(self.query.weight, std=self.init_std)
        with torch.no_grad():
            self.query.weight[0].zero_()
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: tuple[Any, Tensor] | None = None
        #: Search scalar subspaces with the compiled C loop (``use_fused_search``); same codes.
        self.fused_search = False
        #: Training: (version key, codes of every id) from the last whole-table decode.
        self._train_codes: tuple[Any, Any] | None = None

    def _centroids_init(self, *shape: int) -> nn.Parameter:
        """Centroids drawn from N(0, init_std^2), like the queries: inside the cloud of query
        sub-vectors from the start, so nearly all are chosen by some id."""
        return nn.Parameter(torch.randn(*shape) * self.init_std)

    # ------------------------------------------------------------ to implement
    def _centroid_tensors(self) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _search_all(self, values: bool) -> tuple[Any, Tensor | None]:  # pragma: no cover - abstract
        """Codes of every real id and, with ``values``, their ``(n, d)`` served rows."""
        raise NotImplementedError

    def _train_lookup(
        self, unique: Tensor, counts: Tensor, known: Any = None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Straight-through vectors ``(len(unique), d)`` of sorted distinct ids and their aux sum
        (each row weighted by its count, padding by 0)."""
        raise NotImplementedError

    def _query_rows(self, ids: Tensor) -> Tensor:
        """Query rows of distinct ids: ``index_select``, whose backward is one ``index_add``
        (about 2x faster than ``embedding``'s backward, same values), unless ``train.sparse`` made
        the query table sparse. The padding row's gradient is zeroed by ``quantize``."""
        if self.query.sparse:
            return self.query(ids)
        return self.query.weight.index_select(0, ids)

    # ------------------------------------------------------------ served form
    def _key(self) -> tuple[Any, ...] | None:
        return version_key(self.query.weight, *self._centroid_tensors())

    def codes(self) -> Any:
        """Codes of the real ids from the current query table (cached)."""
        return self._served()[0]

    def _served(self) -> tuple[Any, Tensor]:
        """Codes of the real ids and the served ``(n + 1, d)`` table (row 0 zeros), cached until
        the query table or the centroids change."""
        key = self._key()
        if key is not None and key == self._cache_key and self._cache is not None:
            return self._cache
        with torch.no_grad():
            codes, rows = self._search_all(values=True)
            table = torch.cat([rows.new_zeros(1, self.embedding_dim), rows])
        self._cache_key, self._cache = key, (codes, table)
        return codes, table

    # ---------------------------------------------------------------- contract
    def forward(self, ids: Tensor) -> Tensor:
        if not self.training:
            return self._served()[1][ids]
        unique, inverse, counts = distinct_ids(ids.reshape(-1), self.num_embeddings)
        known, key = None, self._key()
        if key is not None and self._train_codes is not None and self._train_codes[0] == key:
            known = self._train_codes[1]  # the table was decoded in this step already
        out = self._train_step_lookup(unique, counts, known)
        # Expand to the batch; ``index_select``'s backward (one ``index_add``) gives the same sums
        # as ``embedding``'s and is faster.
        return out.index_select(0, inverse).reshape(*ids.shape, self.embedding_dim)

    def _train_step_lookup(self, unique: Tensor, counts: Tensor, known: Any) -> Tensor:
        """``_train_lookup`` plus the aux loss: ``aux_weight`` x the mean over looked-up real rows
        and dims."""
        out, aux = self._train_lookup(unique, counts, known)
        rows = (counts * (unique != 0)).sum().clamp(min=1)
        self._add_aux(self.aux_weight * aux / (rows * self.embedding_dim))
        return out

    def full_table(self) -> Tensor:
        """Eval: the served table. Training: a straight-through lookup of every id (with its aux),
        the codes kept for the rest of the step."""
        if not self.training:
            return self._served()[1]
        key = self._key()
        if key is None or self._train_codes is None or self._train_codes[0] != key:
            with torch.no_grad():
                self._train_codes = (key, self._search_all(values=False)[0])
        ids = torch.arange(self.num_embeddings, device=self.query.weight.device)
        return self._train_step_lookup(ids, torch.ones_like(ids), self._train_codes[1])


def use_fused_search(
    model: nn.Module,
    enabled: bool = True,
    *,
    required: bool = True,
    device: torch.device | None = None,
) -> int:
    """Switch every DPQ/MGQE layer of ``model`` to the compiled nearest-centroid search
    (``train.fused_vq``; ``recbench.embeddings.vq_kernel``) or back; returns how many layers it
    switched. The codes, outputs and gradients are the same bit for bit; only the search is faster.

    ``required`` (``train.fused_vq=true``) compiles the kernel first, so a missing C compiler fails
    here with a one-line ``ConfigError``, before training starts. Otherwise (``auto``, the default)
    a model on a non-CPU ``device`` or a machine that cannot build the kernel keeps the eager
    search (one log line per call), since nothing a run computes depends on the choice."""
    layers = [m for m in model.modules() if isinstance(m, VQEmbedding)]
    if enabled and layers:
        if not required and device is not None and device.type != "cpu":
            return 0
        try:
            vq_kernel.load()
        except ConfigError as exc:
            if required:
                raise
            log.info("train.fused_vq=auto keeps the eager DPQ/MGQE search: %s", exc)
            return 0
    for layer in layers:
        layer.fused_search = bool(enabled)
    return len(layers)
