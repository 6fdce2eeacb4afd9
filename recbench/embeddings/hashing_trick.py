"""Hashing trick (Weinberger et al. 2009): ids share ``m`` rows chosen by one hash function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding
from recbench.embeddings.hashing import (
    bucket_mapping,
    check_bucket_knobs,
    check_hash_knobs,
    resolve_num_buckets,
    solve_buckets,
)
from recbench.errors import ConfigError


class HashingTrickEmbedding(CompressedEmbedding):
    """Every real id reads the row ``hash(id) % m`` of one ``m x d`` table; serving bits ``32*m*d``.

    The mapping is computed once at construction from ``(hash_family, hash_seed, m)`` and kept as a
    non-persistent buffer: it is recomputable, so neither checkpoints nor the serving artifact store
    it. ``m`` is ``num_buckets`` when set, else ``floor(compression_ratio * n)``. Padding (id 0) is
    not hashed: its output is zeroed, so it never shares a row with a real id.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        num_buckets: int | None = None,
        compression_ratio: float | None = 0.25,
        hash_family: str = "murmur3",
        hash_seed: int = 0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts)
        self.check_knobs(
            embedding_dim,
            num_buckets=num_buckets,
            compression_ratio=compression_ratio,
            hash_family=hash_family,
            hash_seed=hash_seed,
            init_std=init_std,
        )
        self.num_buckets = resolve_num_buckets(num_buckets, compression_ratio, self.num_ids)
        self.compression_ratio = None if compression_ratio is None else float(compression_ratio)
        self.hash_family = str(hash_family)
        self.hash_seed = int(hash_seed)
        self.init_std = float(init_std)
        self.weight = nn.Parameter(
            torch.randn(self.num_buckets, self.embedding_dim) * self.init_std
        )
        mapping = bucket_mapping(
            self.num_embeddings, self.hash_family, [self.hash_seed], self.num_buckets
        )
        self.register_buffer("mapping", mapping[:, 0].contiguous(), persistent=False)

    @classmethod
    def check_knobs(cls, embedding_dim: int, **knobs: Any) -> None:
        check_bucket_knobs(knobs.get("num_buckets"), knobs.get("compression_ratio", 0.25))
        check_hash_knobs(knobs.get("hash_family", "murmur3"), knobs.get("hash_seed", 0))
        if knobs.get("init_std", 0.01) <= 0:
            raise ConfigError(f"method.init_std={knobs['init_std']} must be > 0, e.g. 0.01")

    def forward(self, ids: Tensor) -> Tensor:
        return self._zero_padding(ids, self._lookup(self.mapping[ids], self.weight))

    def full_table(self) -> Tensor:
        rows = self.weight[self.mapping[1:]]
        return torch.cat([rows.new_zeros(1, self.embedding_dim), rows])

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def serving_bits(self) -> int:
        return 32 * self.num_buckets * self.embedding_dim

    def knobs(self) -> dict[str, Any]:
        return {
            "num_buckets": self.num_buckets,
            "compression_ratio": self.compression_ratio,
            "hash_family": self.hash_family,
            "hash_seed": self.hash_seed,
            "init_std": self.init_std,
        }

    def serving_tensors(self) -> dict[str, Tensor]:
        return {"table": self.weight.detach().float().cpu().contiguous()}

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        table = tensors["table"].float()
        mapping = bucket_mapping(
            int(meta["num_embeddings"]),
            meta["hash_family"],
            [int(meta["hash_seed"])],
            table.shape[0],
        )[:, 0]
        rows = table[mapping]
        rows[0] = 0.0
        return rows

    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Largest ``m`` with ``32*m*d <= budget * 32*n*d``, i.e. ``m = floor(budget * n)``."""
        return {
            **knobs,
            "num_buckets": solve_buckets(cls.__name__, budget, num_ids),
            "compression_ratio": None,
        }
