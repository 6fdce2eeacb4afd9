"""TT-Rec (Yin et al., MLSys 2021): the embedding table as a tensor train of small cores.

The ``n x d`` table (real ids only) is viewed as a ``(n_1 x d_1) x ... x (n_K x d_K)`` tensor with
``prod(n_k) >= n`` and ``prod(d_k) = d``, and stored as ``K`` cores. Row ``x = id - 1`` has the
mixed-radix digits ``(i_1, ..., i_K)`` (``i_1`` most significant) and is the chain product
``G_1[i_1] G_2[i_2] ... G_K[i_K]`` of the slices ``G_k[i_k]`` of shape ``(r_{k-1}, d_k, r_k)``,
``r_0 = r_K = 1``. The paper writes a core as ``(r_{k-1}, n_k, d_k, r_k)``; it is stored here as
``(n_k, r_{k-1}, d_k, r_k)`` (like the reference FBTT-Embedding library) so a slice is one row gather.
Serving bits ``32 * sum_k r_{k-1} * n_k * d_k * r_k``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.errors import BudgetError, ConfigError


# ------------------------------------------------------------------ factorisations
def _ceil_root(n: int, k: int) -> int:
    """Smallest integer ``f >= 1`` with ``f**k >= n`` (exact, no float rounding)."""
    f = max(1, int(round(n ** (1.0 / k))))
    while f**k < n:
        f += 1
    while f > 1 and (f - 1) ** k >= n:
        f -= 1
    return f


def balanced_row_factors(num_ids: int, num_cores: int) -> list[int]:
    """``K`` factors with product ``>= n``, as equal as possible: each is the ceiling ``K``-th root of
    what is left to cover (e.g. 1682 -> [12, 12, 12], 2000 -> [13, 13, 12]). Why greedy roots: it
    overshoots ``n`` by little (the unused rows are stored but never read) and keeps the cores of
    similar size, which the paper's balanced shapes aim for."""
    factors, left = [], num_ids
    for k in range(num_cores, 0, -1):
        f = _ceil_root(left, k)
        factors.append(f)
        left = -(-left // f)
    return factors


def balanced_dim_factors(embedding_dim: int, num_cores: int) -> list[int]:
    """``K`` factors with product exactly ``d``, the most balanced (smallest largest factor, then
    smallest sum), largest first: 64 -> [4, 4, 4], 32 -> [4, 4, 2], 7 -> [7, 1, 1]."""
    divisors = [f for f in range(1, embedding_dim + 1) if embedding_dim % f == 0]
    best: tuple[int, int, tuple[int, ...]] | None = None
    for head in itertools.combinations_with_replacement(divisors, num_cores - 1):
        prod = math.prod(head)
        if embedding_dim % prod:
            continue
        combo = tuple(sorted((*head, embedding_dim // prod), reverse=True))
        key = (max(combo), sum(combo), combo)
        if best is None or key < best:
            best = key
    assert best is not None
    return list(best[2])


def _int_list(values: Any, name: str) -> list[int]:
    if isinstance(values, (int, bool)) or values is None:
        raise ConfigError(f"method.{name}={values} must be a list of integers >= 1")
    out = list(values)
    if any(isinstance(v, bool) or int(v) != v or v < 1 for v in out):
        raise ConfigError(f"method.{name}={out} must be a list of integers >= 1")
    return [int(v) for v in out]


def resolve_shapes(
    num_ids: int,
    embedding_dim: int,
    num_cores: int,
    tt_rank: int | Sequence[int],
    n_factors: Sequence[int] | None,
    d_factors: Sequence[int] | None,
) -> tuple[list[int], list[int], list[int]]:
    """Row factors, dimension factors and the full rank list ``[1, r_1, ..., r_{K-1}, 1]``."""
    rows = (
        balanced_row_factors(num_ids, num_cores)
        if n_factors is None
        else _int_list(n_factors, "n_factors")
    )
    dims = (
        balanced_dim_factors(embedding_dim, num_cores)
        if d_factors is None
        else _int_list(d_factors, "d_factors")
    )
    if math.prod(rows) < num_ids:
        raise ConfigError(
            f"method.n_factors={rows} multiply to {math.prod(rows)} < {num_ids} ids; give factors "
            "whose product covers every id, or method.n_factors=null to choose them automatically"
        )
    if isinstance(tt_rank, (int, float)) and not isinstance(tt_rank, bool):
        inner = [int(tt_rank)] * (num_cores - 1)
    else:
        inner = _int_list(tt_rank, "tt_rank")
    return rows, dims, [1, *inner, 1]


def tt_bits(rows: Sequence[int], dims: Sequence[int], ranks: Sequence[int]) -> int:
    """Serving bits ``32 * sum_k r_{k-1} n_k d_k r_k``."""
    return 32 * sum(ranks[k] * rows[k] * dims[k] * ranks[k + 1] for k in range(len(rows)))


def tt_full(cores: Sequence[Tensor], num_rows: int) -> Tensor:
    """The first ``num_rows`` rows of the table a tensor train represents, by chained matrix
    products over whole cores (one GEMM per core, no per-row work): used for full ranking and by
    ``table_from_serving``. Cores are ``(n_k, r_{k-1}, d_k, r_k)``."""
    rows = [c.shape[0] for c in cores]
    dims = [c.shape[2] for c in cores]
    res = cores[0].reshape(rows[0] * dims[0], cores[0].shape[3])  # (i1 j1, r1)
    for core in cores[1:]:
        n, r_in, d, r_out = core.shape
        res = res @ core.permute(1, 0, 2, 3).reshape(r_in, n * d * r_out)
        res = res.reshape(-1, r_out)  # (i1 j1 ... ik jk, rk)
    k = len(cores)
    res = res.reshape(*itertools.chain.from_iterable(zip(rows, dims)))
    res = res.permute(*range(0, 2 * k, 2), *range(1, 2 * k, 2))
    return res.reshape(math.prod(rows), math.prod(dims))[:num_rows]


@dataclass(frozen=True)
class TTRecKnobs(Knobs):
    tt_rank: int | list[int] = 16  # one rank for every inner bond, or a list of num_cores - 1
    num_cores: int = 3  # K (paper: 3)
    n_factors: list[int] | None = None  # row factors; null: balanced factorisation of n
    d_factors: list[int] | None = None  # dimension factors; null: balanced factorisation of d
    init_std: float = 0.01
    decay_cores: bool = False  # train.weight_decay on the cores (the paper trains without decay)

    def validate(self, embedding_dim: int) -> None:
        k = self.num_cores
        if isinstance(k, bool) or int(k) != k or not 2 <= k <= 8:
            raise ConfigError(f"method.num_cores={k} must be an integer in [2, 8] (paper: 3)")
        k = int(k)
        rank = self.tt_rank
        if isinstance(rank, (int, float)) and not isinstance(rank, bool):
            if int(rank) != rank or rank < 1:
                raise ConfigError(
                    f"method.tt_rank={rank} must be an integer >= 1 (e.g. 16) or a list"
                )
        elif len(_int_list(rank, "tt_rank")) != k - 1:
            raise ConfigError(
                f"method.tt_rank={list(rank)} must hold num_cores - 1 = {k - 1} ranks (or be one integer)"
            )
        for name in ("n_factors", "d_factors"):
            value = getattr(self, name)
            if value is not None and len(_int_list(value, name)) != k:
                raise ConfigError(
                    f"method.{name}={list(value)} must hold num_cores = {k} factors (or be null)"
                )
        dims = self.d_factors
        if dims is not None and math.prod(_int_list(dims, "d_factors")) != embedding_dim:
            raise ConfigError(
                f"method.d_factors={list(dims)} multiply to {math.prod(dims)}, not the embedding "
                f"dimension {embedding_dim}; give factors of {embedding_dim} or null"
            )
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


class TTRecEmbedding(CompressedEmbedding):
    """Tensor-train table (see the module docstring); serving bits ``32 * sum_k r_{k-1} n_k d_k r_k``.

    Knobs: ``tt_rank`` (one rank for every inner bond, or a list of ``K - 1``), ``num_cores`` ``K``
    (paper: 3), ``n_factors`` / ``d_factors`` (null: balanced factorisations of ``n`` and ``d``).
    Init (the paper's "sampled Gaussian"): every core entry i.i.d. ``N(0, s^2)`` with
    ``s = (init_std^2 / prod_k r_k)^(1/(2K))``; a table entry is a sum of ``prod r_k`` products of
    ``K`` independent entries, so it has mean 0 and std exactly ``init_std``, like a full table's.
    """

    knob_type = TTRecKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.rows, self.dims, self.ranks = resolve_shapes(
            self.num_ids, self.embedding_dim, self.num_cores, self.tt_rank, self.n_factors,
            self.d_factors,
        )  # fmt: skip
        core_std = (self.init_std**2 / math.prod(self.ranks)) ** (1.0 / (2 * self.num_cores))
        self.cores = nn.ParameterList(
            nn.Parameter(torch.randn(n, self.ranks[k], d, self.ranks[k + 1]) * core_std)
            for k, (n, d) in enumerate(zip(self.rows, self.dims))
        )
        strides = [math.prod(self.rows[k + 1 :]) for k in range(self.num_cores)]
        self.register_buffer("strides", torch.tensor(strides, dtype=torch.long), persistent=False)
        self.register_buffer("radices", torch.tensor(self.rows, dtype=torch.long), persistent=False)

    # ---------------------------------------------------------------- forward
    #: A lookup of at least this fraction of the tensor's rows materialises the table (a few GEMMs)
    #: and gathers from it instead of contracting per id (many tiny batched matmuls, slow on CPU).
    dense_fraction = 0.25

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        x = (flat - 1).clamp_min(0)
        if flat.numel() >= self.dense_fraction * math.prod(self.rows):
            rows = tt_full(list(self.cores), self.num_ids)
            return self._zero_padding(
                ids, F.embedding(x, rows).reshape(*ids.shape, self.embedding_dim)
            )
        digits = torch.div(x.unsqueeze(1), self.strides, rounding_mode="floor") % self.radices
        batch = flat.numel()
        res: Tensor | None = None
        for k, core in enumerate(self.cores):
            n, r_in, d, r_out = core.shape
            piece = F.embedding(digits[:, k], core.reshape(n, -1))  # (B, r_in * d * r_out)
            if res is None:
                res = piece.reshape(batch, d, r_out)
            else:  # (B, D, r_in) @ (B, r_in, d * r_out) -> (B, D * d, r_out)
                res = torch.bmm(res, piece.reshape(batch, r_in, d * r_out)).reshape(
                    batch, -1, r_out
                )
        assert res is not None
        return self._zero_padding(ids, res.reshape(*ids.shape, self.embedding_dim))

    def no_weight_decay(self) -> list[nn.Parameter]:
        """The cores, unless ``decay_cores``: Adam's decay pulls each core entry to zero at a rate
        that does not shrink with the entry, while the entry's gradient is a product of the other
        cores' small entries; at GMF's weight decay 1e-5 every seed collapsed to constant scores in
        its first epoch (docs/results.md, equal-memory leaderboard)."""
        return [] if self.decay_cores else list(self.cores)

    def full_table(self) -> Tensor:
        rows = tt_full(list(self.cores), self.num_ids)
        return torch.cat([rows.new_zeros(1, self.embedding_dim), rows])

    def serving_bits(self) -> int:
        return tt_bits(self.rows, self.dims, self.ranks)

    def knobs(self) -> dict[str, Any]:
        return {
            "tt_rank": self.ranks[1:-1],
            "num_cores": self.num_cores,
            "n_factors": list(self.rows),
            "d_factors": list(self.dims),
            "init_std": self.init_std,
            "decay_cores": self.decay_cores,
        }

    def serving_tensors(self) -> dict[str, Tensor]:
        return {f"core{k}": c.detach().float().cpu().contiguous() for k, c in enumerate(self.cores)}

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        cores = [tensors[f"core{k}"].float() for k in range(int(meta["num_cores"]))]
        rows = tt_full(cores, int(meta["num_embeddings"]) - 1)
        return torch.cat([rows.new_zeros(1, rows.shape[1]), rows])

    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Largest single ``tt_rank`` whose cores fit ``budget * 32*n*d`` (factorisations as
        configured; the size grows strictly with the rank, so a search from below finds it)."""
        knobs = {**knobs, "tt_rank": 1}
        given = cls.check_knobs(embedding_dim, **knobs)
        k = int(given.num_cores)
        full = 32 * num_ids * embedding_dim

        def bits(rank: int) -> int:
            rows, dims, ranks = resolve_shapes(
                num_ids, embedding_dim, k, rank, given.n_factors, given.d_factors
            )
            return tt_bits(rows, dims, ranks)

        if bits(1) / full > budget:
            raise BudgetError.unreachable(
                cls.__name__, budget, num_ids, bits(1) / full, "tt_rank=1"
            )
        lo, hi = 1, 2
        while bits(hi) / full <= budget:
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # bits(lo) fits, bits(hi) does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if bits(mid) / full <= budget else (lo, mid)
        return {**knobs, "tt_rank": lo}
