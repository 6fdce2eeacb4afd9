"""Quotient-remainder trick (Shi et al., KDD 2020): two small tables give every id a unique vector."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.hashing import check_bucket_knobs, resolve_num_buckets
from recbench.errors import BudgetError, ConfigError

COMBINERS = ("mult", "add", "concat")


def qr_indices(ids: Tensor, num_buckets: int) -> tuple[Tensor, Tensor]:
    """Quotient and remainder rows of real ids: ``x = id - 1``, ``q = x // m``, ``r = x % m``.

    Integer tensor ops only (no float division), so the split is exact for any int64 id. Padding
    (id 0) is clamped to ``x = 0``; callers zero its output.
    """
    x = (ids.long() - 1).clamp_min(0)
    return torch.div(x, num_buckets, rounding_mode="floor"), torch.remainder(x, num_buckets)


def qr_split_dims(embedding_dim: int, combiner: str) -> tuple[int, int]:
    """Widths ``(d1, d2)`` of the quotient and remainder tables: ``d/2`` each for concat, else ``d``."""
    if combiner == "concat":
        return embedding_dim // 2, embedding_dim // 2
    return embedding_dim, embedding_dim


def qr_bits(num_ids: int, embedding_dim: int, num_buckets: int, combiner: str) -> int:
    """Serving bits ``32*(ceil(n/m)*d1 + m*d2)`` (``d1 = d2 = d`` for mult/add, ``d/2`` for concat)."""
    d1, d2 = qr_split_dims(embedding_dim, combiner)
    return 32 * (-(-num_ids // num_buckets) * d1 + num_buckets * d2)


@dataclass(frozen=True)
class QRKnobs(Knobs):
    num_buckets: int | None = None  # remainder rows m; when set it overrides compression_ratio
    compression_ratio: float | None = (
        0.02  # m = floor(compression_ratio * n) when num_buckets is null
    )
    combiner: str = "mult"  # mult, add or concat
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        check_bucket_knobs(self.num_buckets, self.compression_ratio)
        combiner = self.combiner
        if combiner not in COMBINERS:
            raise ConfigError(
                f"method.combiner={combiner} is unknown; use one of {', '.join(COMBINERS)}"
            )
        if combiner == "concat" and embedding_dim % 2:
            raise ConfigError(
                f"method.combiner=concat needs an even embedding dimension (got {embedding_dim}): "
                "each table holds half of it; use an even dimension or method.combiner=mult"
            )
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


class QuotientRemainderEmbedding(CompressedEmbedding):
    """``ceil(n/m) x d1`` quotient table and ``m x d2`` remainder table, combined per id.

    Id ``i`` (``x = i - 1``) reads quotient row ``x // m`` and remainder row ``x % m``; no two ids
    share both, so every id gets its own vector ("complementary partitions"). Combiners:

    * ``mult`` (the Keras example's): element-wise product. The quotient table starts at
      ``N(1, init_std^2)`` and the remainder table at ``N(0, init_std^2)``, so a product starts like a
      full table's ``N(0, init_std^2)`` row instead of a vanishing ``init_std^2``-scale one.
    * ``add``: sum; both tables start at ``N(0, init_std^2 / 2)`` so the sum has std ``init_std``.
    * ``concat``: ``[quotient, remainder]``, each ``d/2`` wide (``d`` must be even), ``N(0, init_std^2)``.

    ``m`` is ``num_buckets`` when set, else ``floor(compression_ratio * n)``.
    """

    knob_type = QRKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.num_buckets = resolve_num_buckets(
            self.num_buckets, self.compression_ratio, self.num_ids
        )
        d1, d2 = qr_split_dims(self.embedding_dim, self.combiner)
        num_quotients = -(-self.num_ids // self.num_buckets)
        q_mean, std = 0.0, self.init_std
        if self.combiner == "mult":
            q_mean = 1.0
        elif self.combiner == "add":
            std = self.init_std / math.sqrt(2.0)
        self.quotient = nn.Parameter(q_mean + std * torch.randn(num_quotients, d1))
        self.remainder = nn.Parameter(std * torch.randn(self.num_buckets, d2))

    @staticmethod
    def _combine(q: Tensor, r: Tensor, combiner: str) -> Tensor:
        if combiner == "mult":
            return q * r
        if combiner == "add":
            return q + r
        return torch.cat([q, r], dim=-1)

    def forward(self, ids: Tensor) -> Tensor:
        q, r = qr_indices(ids, self.num_buckets)
        vectors = self._combine(
            self._lookup(q, self.quotient), self._lookup(r, self.remainder), self.combiner
        )
        return self._zero_padding(ids, vectors)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.quotient, self.remainder]

    def serving_bits(self) -> int:
        return qr_bits(self.num_ids, self.embedding_dim, self.num_buckets, self.combiner)

    def serving_tensors(self) -> dict[str, Tensor]:
        return {
            "quotient": self.quotient.detach().float().cpu().contiguous(),
            "remainder": self.remainder.detach().float().cpu().contiguous(),
        }

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        quotient, remainder = tensors["quotient"].float(), tensors["remainder"].float()
        ids = torch.arange(int(meta["num_embeddings"]))
        q, r = qr_indices(ids, remainder.shape[0])
        return cls._zero_padding(ids, cls._combine(quotient[q], remainder[r], meta["combiner"]))

    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """``m`` whose size is the largest that fits ``budget``.

        The size ``m + ceil(n/m)`` (per width) is not monotone in ``m``, but it is non-decreasing for
        ``m >= ceil(sqrt(n))`` and every smaller ``m`` is matched or beaten by ``ceil(n/m)`` there,
        so a binary search over ``[ceil(sqrt(n)), n]`` finds the best fit (the larger ``m``: more
        remainder rows, fewer ids per quotient row).
        """
        combiner = cls.check_knobs(embedding_dim, **{**knobs, "num_buckets": 1}).combiner
        full = 32 * num_ids * embedding_dim

        def fits(m: int) -> bool:
            return qr_bits(num_ids, embedding_dim, m, combiner) / full <= budget

        lo = math.isqrt(num_ids)
        lo += lo * lo < num_ids  # ceil(sqrt(n)): the size is smallest here
        if not fits(lo):
            smallest = qr_bits(num_ids, embedding_dim, lo, combiner) / full
            raise BudgetError.unreachable(
                cls.__name__, budget, num_ids, smallest, f"num_buckets={lo}, combiner={combiner}"
            )
        hi = num_ids
        while lo < hi:  # largest m in [lo, hi] that fits
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return {**knobs, "num_buckets": lo, "compression_ratio": None}
