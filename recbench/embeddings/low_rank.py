"""Low-rank factorised embedding: an ``n x r`` table times a shared ``r x d`` projection."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.errors import BudgetError, ConfigError


def low_rank_bits(num_ids: int, embedding_dim: int, rank: int) -> int:
    """Serving bits ``32*(n*r + r*d)``."""
    return 32 * (num_ids * rank + rank * embedding_dim)


@dataclass(frozen=True)
class LowRankKnobs(Knobs):
    rank: int = 16  # r, at most d
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        rank = self.rank
        if isinstance(rank, bool) or int(rank) != rank or not 1 <= rank <= embedding_dim:
            raise ConfigError(
                f"method.rank={rank} must be an integer in [1, {embedding_dim}] (the embedding "
                "dimension); a larger rank stores more than the full table"
            )
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


class LowRankEmbedding(CompressedEmbedding):
    """Row of id ``i`` is ``table[i - 1] @ projection`` (no bias); serving bits ``32*(n*r + r*d)``.

    The table holds only the ``n`` real ids (padding is zeroed, never stored). Init: table
    ``N(0, init_std^2)`` and projection ``N(0, 1/r)``, so each output coordinate starts with std
    ``init_std`` like a full table's row.
    """

    knob_type = LowRankKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.table = nn.Parameter(torch.randn(self.num_ids, self.rank) * self.init_std)
        self.projection = nn.Parameter(
            torch.randn(self.rank, self.embedding_dim) / math.sqrt(self.rank)
        )

    def forward(self, ids: Tensor) -> Tensor:
        rows = self._lookup((ids - 1).clamp_min(0), self.table)
        return self._zero_padding(ids, rows @ self.projection)

    def full_table(self) -> Tensor:
        rows = self.table @ self.projection
        return torch.cat([rows.new_zeros(1, self.embedding_dim), rows])

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.table]

    def serving_bits(self) -> int:
        return low_rank_bits(self.num_ids, self.embedding_dim, self.rank)

    def serving_tensors(self) -> dict[str, Tensor]:
        return {
            "table": self.table.detach().float().cpu().contiguous(),
            "projection": self.projection.detach().float().cpu().contiguous(),
        }

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        rows = tensors["table"].float() @ tensors["projection"].float()
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
        """Largest rank ``r <= d`` with ``32*(n*r + r*d) <= budget * 32*n*d``."""
        full = 32 * num_ids * embedding_dim
        rank = min(
            embedding_dim,
            math.floor(budget * num_ids * embedding_dim / (num_ids + embedding_dim) + 1e-9),
        )
        while rank >= 1 and low_rank_bits(num_ids, embedding_dim, rank) / full > budget:
            rank -= 1
        if rank < 1:
            smallest = low_rank_bits(num_ids, embedding_dim, 1) / full
            raise BudgetError.unreachable(cls.__name__, budget, num_ids, smallest, "rank=1")
        return {**knobs, "rank": rank}
