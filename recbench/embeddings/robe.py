"""ROBE (Desai, Chou & Shrivastava, MLSys 2022): every id reads blocks of one shared 1-D array.

The embedding of id ``x`` is cut into ``C = ceil(d / Z)`` chunks of ``Z`` consecutive dimensions.
Chunk ``c`` reads the ``Z`` consecutive values of the array ``M`` (size ``m``) that start at the
hashed offset ``o(x, c) = ((A x + B c + D) mod p) mod m``, wrapping around the end of the array:
``E[x][c Z + t] = s(x, c) * M[(o(x, c) + t) mod m]``. ``s`` is an optional sign hash
(``((A' x + B' c + D') mod p) mod 2`` mapped to +-1). ``p = 2^31 - 1``; the coefficients come from
``hash_seed`` (numpy's PCG64) and are recomputed, never stored. ``Z = 1`` is elementwise hashing (the
HashedNet limit); larger blocks read contiguous memory, the paper's point. Serving bits ``32 * m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.hashing import PRIME, check_universal_hash_ids
from recbench.errors import BudgetError, ConfigError


def robe_coefficients(seed: int) -> Tensor:
    """``[A, B, D, A', B', D']``: offset-hash and sign-hash coefficients from ``seed`` alone."""
    rng = np.random.default_rng(int(seed))
    a = rng.integers(1, PRIME, size=2, dtype=np.int64)
    rest = rng.integers(0, PRIME, size=4, dtype=np.int64)
    return torch.tensor([a[0], rest[0], rest[1], a[1], rest[2], rest[3]], dtype=torch.long)


def robe_lookup(
    ids: Tensor, array: Tensor, coef: Tensor, embedding_dim: int, block_size: int, sign_hash: bool
) -> Tensor:
    """``(N,)`` ids -> ``(N, d)`` vectors read from ``array`` (no padding handling)."""
    m = array.shape[0]
    chunks = -(-embedding_dim // block_size)
    c = torch.arange(chunks, device=ids.device)
    x = ids.long().unsqueeze(1)
    offsets = (coef[0] * x + coef[1] * c + coef[2]) % PRIME % m  # (N, C)
    index = offsets.unsqueeze(2) + torch.arange(block_size, device=ids.device)  # (N, C, Z)
    # offset < m, so one subtraction wraps unless a block is longer than the array
    index = index % m if block_size > m else torch.where(index >= m, index - m, index)
    index = index.reshape(-1, chunks * block_size)[:, :embedding_dim]
    # index_select: its backward (index_add_) is ~14x faster on CPU than embedding's for 1-wide rows
    values = array.index_select(0, index.reshape(-1)).reshape(index.shape)
    if sign_hash:
        parity = (coef[3] * x + coef[4] * c + coef[5]) % PRIME % 2  # (N, C)
        sign = (1 - 2 * parity).to(values.dtype).repeat_interleave(block_size, dim=1)
        values = values * sign[:, :embedding_dim]
    return values


@dataclass(frozen=True)
class ROBEKnobs(Knobs):
    array_size: int | None = None  # m floats; when set it overrides compression_ratio
    compression_ratio: float | None = (
        0.25  # m = floor(compression_ratio * n * d) when array_size is null
    )
    block_size: int = 32  # Z, at most d
    sign_hash: bool = False
    hash_seed: int = 0
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        size, ratio = self.array_size, self.compression_ratio
        if size is not None:
            if isinstance(size, bool) or int(size) != size or not 1 <= size < PRIME:
                raise ConfigError(
                    f"method.array_size={size} must be an integer in [1, 2^31 - 2] (or null)"
                )
        elif ratio is None:
            raise ConfigError(
                "method.array_size=null and method.compression_ratio=null leave the array size "
                "undefined; set one of them (e.g. method.compression_ratio=0.25)"
            )
        elif not ratio > 0:
            raise ConfigError(
                f"method.compression_ratio={ratio} must be > 0 (array size / (n * d), e.g. 0.25)"
            )
        z = self.block_size
        if isinstance(z, bool) or int(z) != z or not 1 <= z <= embedding_dim:
            raise ConfigError(
                f"method.block_size={z} must be an integer in [1, {embedding_dim}] (the embedding "
                "dimension), e.g. 32"
            )
        if not isinstance(self.sign_hash, bool):
            raise ConfigError(f"method.sign_hash={self.sign_hash} must be true or false")
        seed = self.hash_seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"method.hash_seed={seed} must be an integer >= 0")
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


class ROBEmbedding(CompressedEmbedding):
    """Random offset block embedding (see the module docstring); serving bits ``32 * m``.

    ``m`` is ``array_size`` when set, else ``floor(compression_ratio * n * d)`` (the fraction of the
    full table's size). Init ``N(0, init_std^2)`` for the array, so every embedding entry starts
    with std ``init_std`` like a full table's (the reference code initialises uniformly; recbench
    keeps one init scale for all methods). Padding (id 0) is zeroed, never stored.
    """

    #: Ids read at once by ``full_table`` (a ``(chunk, d)`` int64 index each): bounds its memory.
    chunk_size = 65536

    knob_type = ROBEKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        check_universal_hash_ids(self.num_embeddings, "ROBE")
        if self.array_size is None:
            ratio = self.compression_ratio
            self.array_size = max(1, math.floor(ratio * self.num_ids * self.embedding_dim + 1e-9))
        self.array = nn.Parameter(torch.randn(self.array_size) * self.init_std)
        self.register_buffer("coef", robe_coefficients(self.hash_seed), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        vectors = robe_lookup(
            flat, self.array, self.coef, self.embedding_dim, self.block_size, self.sign_hash
        )
        return self._zero_padding(ids, vectors.reshape(*ids.shape, self.embedding_dim))

    @classmethod
    def _table(cls, array: Tensor, meta: Mapping[str, Any]) -> Tensor:
        n, d = int(meta["num_embeddings"]), int(meta["embedding_dim"])
        coef = robe_coefficients(int(meta["hash_seed"])).to(array.device)
        parts = [array.new_zeros(1, d)]
        for start in range(1, n, cls.chunk_size):
            ids = torch.arange(start, min(start + cls.chunk_size, n), device=array.device)
            parts.append(
                robe_lookup(ids, array, coef, d, int(meta["block_size"]), bool(meta["sign_hash"]))
            )
        return torch.cat(parts)

    def full_table(self) -> Tensor:
        return self._table(self.array, self.serving_meta())

    def serving_bits(self) -> int:
        return 32 * self.array_size

    def serving_tensors(self) -> dict[str, Tensor]:
        return {"array": self.array.detach().float().cpu().contiguous()}

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        return cls._table(tensors["array"].float(), meta)

    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Largest ``m`` with ``32*m <= budget * 32*n*d``, i.e. ``m = floor(budget * n * d)``."""
        m = math.floor(budget * num_ids * embedding_dim + 1e-9)
        while m >= 1 and m / (num_ids * embedding_dim) > budget:
            m -= 1
        if m < 1:
            smallest = 1 / (num_ids * embedding_dim)
            raise BudgetError.unreachable(cls.__name__, budget, num_ids, smallest, "array_size=1")
        return {**knobs, "array_size": m, "compression_ratio": None}
