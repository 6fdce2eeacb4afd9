"""Mixed-dimension embedding (Ginart et al. 2019): popular ids get wide rows, rare ids narrow ones."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.mixed_dim_solver import (
    as_real_counts,
    dims_from_ratios,
    mass_blocks,
    mixed_dim_bits,
    popularity_ratios,
    resolve_block_sizes,
    solve_alpha,
)
from recbench.errors import ConfigError


def _int_list(values: Sequence[Any] | None) -> list[int | None] | None:
    """Plain list from a YAML list (ListConfig) so knobs stay JSON-serialisable."""
    if values is None:
        return None
    return [None if v is None else int(v) for v in values]


@dataclass(frozen=True)
class MixedDimKnobs(Knobs):
    block_sizes: list[int | None] | None = None  # rows per block in id order; last may be null
    block_dims: list[int] | None = None  # d_i per block; null: the alpha-power rule
    num_blocks: int = 3  # blocks of equal interaction mass when block_sizes is null
    alpha: float = 0.3  # d_i = round(d * (p_i / p_0) ** alpha)
    min_dim: int = 1
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        sizes, dims = _int_list(self.block_sizes), _int_list(self.block_dims)
        if sizes is not None and (not sizes or any(s is None for s in sizes[:-1])):
            raise ConfigError(
                f"method.block_sizes={sizes} must be a non-empty list of row counts; only the last "
                "entry may be null (the rest of the ids)"
            )
        if dims is not None:
            if not dims or any(d is None or not 1 <= d <= embedding_dim for d in dims):
                raise ConfigError(
                    f"method.block_dims={dims} must hold dimensions in [1, {embedding_dim}] "
                    "(the embedding dimension)"
                )
            if sizes is not None and len(sizes) != len(dims):
                raise ConfigError(
                    f"method.block_dims={dims} and method.block_sizes={sizes} differ in length; "
                    "give one dimension per block"
                )
        num_blocks = self.num_blocks
        if isinstance(num_blocks, bool) or int(num_blocks) != num_blocks or num_blocks < 1:
            raise ConfigError(f"method.num_blocks={num_blocks} must be an integer >= 1, e.g. 3")
        if not self.alpha >= 0:
            raise ConfigError(f"method.alpha={self.alpha} must be >= 0 (0 = full dimension)")
        min_dim = self.min_dim
        if (
            isinstance(min_dim, bool)
            or int(min_dim) != min_dim
            or not 1 <= min_dim <= embedding_dim
        ):
            raise ConfigError(
                f"method.min_dim={min_dim} must be an integer in [1, {embedding_dim}]"
            )
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


class MixedDimEmbedding(CompressedEmbedding):
    """Ids split into contiguous frequency blocks; block ``i`` stores ``n_i x d_i`` rows and, when
    ``d_i < d``, a ``d_i x d`` projection (no bias) back to ``d``.

    Blocks come from ``block_sizes`` (row counts in id order, the last may be null = "the rest";
    Keras example: ``[400, 1300, null]`` at ``[64, 32, 16]``) or, when null, ``num_blocks`` blocks of
    equal interaction mass. Dimensions come from ``block_dims`` or, when null, the alpha-power rule
    ``d_i = round(d * (p_i / p_0) ** alpha)`` (``recbench.embeddings.mixed_dim_solver``). The rule
    reads ``counts``, hence ``frequency_aware``. ``knobs()`` reports the resolved blocks and dims so
    the layer can be rebuilt without counts. Init: tables ``N(0, init_std^2)``, projections
    ``N(0, 1/d_i)`` so projected rows start with std ``init_std``. Serving bits
    ``sum 32*n_i*d_i + sum_{d_i<d} 32*d_i*d``.
    """

    frequency_aware: ClassVar[bool] = True
    knob_type = MixedDimKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.block_sizes, self.block_dims = self._resolve(
            self.num_ids, self.embedding_dim, self.counts, self.given_knobs
        )
        self.tables = nn.ParameterList(
            nn.Parameter(torch.randn(n_i, d_i) * self.init_std)
            for n_i, d_i in zip(self.block_sizes, self.block_dims)
        )
        self.projections = nn.ParameterDict(
            {
                str(i): nn.Parameter(torch.randn(d_i, self.embedding_dim) / math.sqrt(d_i))
                for i, d_i in enumerate(self.block_dims)
                if d_i < self.embedding_dim
            }
        )

    # --------------------------------------------------------------- resolution
    @staticmethod
    def _resolve(
        num_ids: int, embedding_dim: int, counts: Tensor | None, knobs: MixedDimKnobs
    ) -> tuple[list[int], list[int]]:
        """Block sizes and dims from the knobs (and counts when a rule needs them); empty blocks
        (e.g. a "rest" that is empty) are dropped, as they would store a useless projection."""
        sizes_knob, dims_knob = _int_list(knobs.block_sizes), _int_list(knobs.block_dims)
        if (sizes_knob is None or dims_knob is None) and counts is None:
            raise ConfigError(
                "MixedDimEmbedding needs training counts for the alpha-power rule; pass counts= or "
                "set both method.block_sizes and method.block_dims explicitly"
            )
        real_counts = None if counts is None else as_real_counts(counts.numpy(), num_ids)
        if sizes_knob is not None:
            sizes = resolve_block_sizes(sizes_knob, num_ids)
            if dims_knob is not None and len(dims_knob) == len(sizes):
                dims_knob = [k for k, s in zip(dims_knob, sizes) if s > 0]
            sizes = [s for s in sizes if s > 0]
        else:
            k = len(dims_knob) if dims_knob is not None else int(knobs.num_blocks)
            sizes = mass_blocks(real_counts, k)
        if dims_knob is not None:
            dims = [int(x) for x in dims_knob]
            if len(dims) != len(sizes):
                raise ConfigError(
                    f"method.block_dims={dims} has {len(dims)} entries but there are {len(sizes)} "
                    f"blocks ({num_ids} ids); give one dimension per block"
                )
        else:
            ratios = popularity_ratios(real_counts, sizes)
            dims = dims_from_ratios(ratios, sizes, knobs.alpha, embedding_dim, knobs.min_dim)
        return sizes, dims

    # ----------------------------------------------------------------- contract
    def _block_rows(self, i: int) -> Tensor:
        table = self.tables[i]
        key = str(i)
        return table @ self.projections[key] if key in self.projections else table

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        starts = [1]
        for n_i in self.block_sizes:
            starts.append(starts[-1] + n_i)
        boundaries = torch.tensor(starts[1:-1], dtype=flat.dtype, device=flat.device)
        block = torch.bucketize(flat, boundaries, right=True)
        out = self.tables[0].new_zeros(flat.shape[0], self.embedding_dim)
        for i, table in enumerate(self.tables):
            where = torch.nonzero((block == i) & (flat != 0)).squeeze(1)
            if where.numel() == 0:
                continue
            rows = F.embedding(flat[where] - starts[i], table)
            key = str(i)
            if key in self.projections:
                rows = rows @ self.projections[key]
            out = out.index_copy(0, where, rows)
        return out.reshape(*ids.shape, self.embedding_dim)

    def full_table(self) -> Tensor:
        rows = [self._block_rows(i) for i in range(len(self.tables))]
        return torch.cat([rows[0].new_zeros(1, self.embedding_dim), *rows])

    def serving_bits(self) -> int:
        return mixed_dim_bits(self.block_sizes, self.block_dims, self.embedding_dim)

    def serving_tensors(self) -> dict[str, Tensor]:
        tensors = {
            f"table{i}": t.detach().float().cpu().contiguous() for i, t in enumerate(self.tables)
        }
        for key, proj in self.projections.items():
            tensors[f"projection{key}"] = proj.detach().float().cpu().contiguous()
        return tensors

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        d = int(meta["embedding_dim"])
        rows = [torch.zeros(1, d)]
        for i in range(len(meta["block_dims"])):
            table = tensors[f"table{i}"].float()
            proj = tensors.get(f"projection{i}")
            rows.append(table if proj is None else table @ proj.float())
        return torch.cat(rows)

    # ------------------------------------------------------------- equal memory
    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Picks ``alpha`` (the blocks stay as configured): the smallest ``alpha`` whose layer is the
        largest that fits ``budget`` (``mixed_dim_solver.solve_alpha``)."""
        given = cls.check_knobs(embedding_dim, **knobs)
        if given.block_dims is not None:
            raise ConfigError(
                f"method.block_dims={_int_list(given.block_dims)} fixes the size, so "
                "method.budget cannot choose it; set method.block_dims=null (alpha-power rule)"
            )
        if counts is None:
            raise ConfigError(
                "method.budget for MixedDimEmbedding needs training counts (the alpha-power rule)"
            )
        real_counts = as_real_counts(torch.as_tensor(counts).numpy(), num_ids)
        sizes_knob = _int_list(given.block_sizes)
        if sizes_knob is not None:
            sizes = [s for s in resolve_block_sizes(sizes_knob, num_ids) if s > 0]
        else:
            sizes = mass_blocks(real_counts, int(given.num_blocks))
        alpha = solve_alpha(
            budget, real_counts, sizes, embedding_dim, int(given.min_dim), cls.__name__
        )
        return {**knobs, "alpha": alpha}
