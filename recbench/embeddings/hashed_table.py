"""One ``m x d`` table read through ``k`` hash functions: the shared base of the hashing trick
(``k = 1``) and Bloom embeddings (``k >= 1``, vectors averaged).

Why one base: the two methods differ only in how many hash functions an id reads, so the bucket
count, the mapping, the serving form, the size formula ``32*m*d`` and the budget solver are one
piece of code; ``hashing_trick.py`` and ``bloom.py`` hold only what is their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.hashing import (
    bucket_mapping,
    check_bucket_knobs,
    check_hash_knobs,
    resolve_num_buckets,
    solve_buckets,
)
from recbench.errors import ConfigError


@dataclass(frozen=True)
class HashedTableKnobs(Knobs):
    """Bucket count, hash family and seed, init: the knobs of the hashing trick."""

    num_buckets: int | None = None  # m; when set it overrides compression_ratio
    compression_ratio: float | None = 0.25  # m = floor(ratio * n) when num_buckets is null
    hash_family: str = "murmur3"
    hash_seed: int = 0
    init_std: float = 0.01

    def hash_count(self) -> int:
        """``k``, the hash functions each id reads: one here (the hashing trick)."""
        return 1

    def hash_seeds(self) -> list[int]:
        """Seeds of the ``k`` functions: ``hash_seed * k + j`` for ``j < k`` (``[hash_seed]`` for
        ``k = 1``), so consecutive ``hash_seed`` values share no function."""
        k = self.hash_count()
        return [int(self.hash_seed) * k + j for j in range(k)]

    def validate(self, embedding_dim: int) -> None:
        check_bucket_knobs(self.num_buckets, self.compression_ratio)
        check_hash_knobs(self.hash_family, self.hash_seed, self.hash_count())
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


class HashedTableEmbedding(CompressedEmbedding):
    """Each real id reads ``k`` rows ``hash_j(id) % m`` of one ``m x d`` table and returns their
    average (``k = 1``: the row itself); serving bits ``32*m*d``.

    The ``(n + 1, k)`` mapping is computed once at construction from ``(hash_family, hash seeds,
    m)`` and kept as a non-persistent buffer: it is recomputable, so neither checkpoints nor the
    serving artifact store it. ``m`` is ``num_buckets`` when set, else
    ``floor(compression_ratio * n)``. Padding (id 0) is not hashed: its output is zeroed, so it
    never shares a row with a real id. Two functions may pick the same bucket for an id; that row
    then counts twice in the mean.
    """

    knob_type = HashedTableKnobs

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
        self.num_hashes = self.given_knobs.hash_count()
        self.weight = nn.Parameter(
            torch.randn(self.num_buckets, self.embedding_dim) * self.init_std
        )
        self.register_buffer(
            "mapping",
            self._mapping(self.num_embeddings, self.given_knobs, self.num_buckets),
            persistent=False,
        )

    @staticmethod
    def _mapping(num_embeddings: int, knobs: HashedTableKnobs, num_buckets: int) -> Tensor:
        """``(num_embeddings, k)``: the bucket of every id under each of the ``k`` functions."""
        return bucket_mapping(num_embeddings, knobs.hash_family, knobs.hash_seeds(), num_buckets)

    def forward(self, ids: Tensor) -> Tensor:
        # One fused gather-and-average (EmbeddingBag, mode="mean"): 2.7x faster forward+backward
        # on CPU than gathering (..., k, d) and averaging (scripts/bench_throughput.py).
        buckets = self.mapping[ids].reshape(-1, self.num_hashes)
        vectors = F.embedding_bag(buckets, self.weight, mode="mean", sparse=self.sparse_grad)
        return self._zero_padding(ids, vectors.reshape(*ids.shape, self.embedding_dim))

    def full_table(self) -> Tensor:
        rows = self.weight[self.mapping[1:]].mean(dim=-2)
        return torch.cat([rows.new_zeros(1, self.embedding_dim), rows])

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def serving_bits(self) -> int:
        return 32 * self.num_buckets * self.embedding_dim

    def serving_tensors(self) -> dict[str, Tensor]:
        return {"table": self.weight.detach().float().cpu().contiguous()}

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        table = tensors["table"].float()
        names = {f.name for f in fields(cls.knob_type)}
        knobs = cls.knob_type.parse({k: v for k, v in meta.items() if k in names}, cls.__name__)
        mapping = cls._mapping(int(meta["num_embeddings"]), knobs, table.shape[0])
        rows = table[mapping[1:]].mean(dim=-2)  # exact for k = 1: the mean of one row is the row
        return torch.cat([rows.new_zeros(1, table.shape[1]), rows])

    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Largest ``m`` with ``32*m*d <= budget * 32*n*d``, i.e. ``m = floor(budget * n)``
        (``k`` does not change the size)."""
        m = solve_buckets(cls.__name__, budget, num_ids)
        return {**knobs, "num_buckets": m, "compression_ratio": None}
