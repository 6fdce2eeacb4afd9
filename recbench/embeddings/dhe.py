"""Deep Hash Embedding (DHE; Kang et al., KDD 2021): no table, an MLP decodes k dense hash encodings.

An id ``x`` is encoded by ``k`` universal hash functions ``h_j(x) = ((a_j x + b_j) mod p) mod m``
(``p = 2^31 - 1``, ``m = 10^6`` in the paper) turned into real values ("dense hash encoding"):

* ``uniform``: ``2 h / (m - 1) - 1`` in ``[-1, 1]``;
* ``gaussian``: Box-Muller on consecutive pairs of ``(h + 1) / m`` and ``h / m`` (needs ``k`` even).

A feed-forward network (the embedding network; paper: Linear -> BatchNorm -> Mish per hidden layer,
then a Linear to ``d``) maps the ``k`` encodings to the embedding. Only the network is stored: the
hash coefficients ``a_j, b_j`` are recomputed from ``hash_seed`` (numpy's PCG64), which the artifact's
manifest records. At serving time each batch norm is folded into the linear layer before it
(``W' = W * g / sqrt(v + eps)``, ``b' = (b - mu) * g / sqrt(v + eps) + beta``), which is what eval mode
computes too, so serving bits are ``32 * sum_l (in_l * out_l + out_l)`` over the ``L + 1`` linear
layers: ``32 * ((k + 1) w + (L - 1)(w + 1) w + (w + 1) d)`` for ``L`` hidden layers of width ``w``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.hashing import PRIME, check_universal_hash_ids
from recbench.errors import BudgetError, ConfigError

ENCODINGS = ("uniform", "gaussian")


def dhe_bits(num_hashes: int, hidden_dim: int, num_layers: int, embedding_dim: int) -> int:
    """Serving bits of the folded network: ``32 * ((k+1) w + (L-1)(w+1) w + (w+1) d)``."""
    k, w, L, d = num_hashes, hidden_dim, num_layers, embedding_dim
    return 32 * ((k + 1) * w + (L - 1) * (w + 1) * w + (w + 1) * d)


def hash_coefficients(seed: int, num_hashes: int) -> tuple[Tensor, Tensor]:
    """``a_j`` in ``[1, p)`` and ``b_j`` in ``[0, p)`` for ``k`` hash functions, from ``seed`` alone."""
    rng = np.random.default_rng(int(seed))
    a = rng.integers(1, PRIME, size=num_hashes, dtype=np.int64)
    b = rng.integers(0, PRIME, size=num_hashes, dtype=np.int64)
    return torch.from_numpy(a), torch.from_numpy(b)


def encode(ids: Tensor, a: Tensor, b: Tensor, hash_range: int, encoding: str) -> Tensor:
    """``(N,)`` real ids -> ``(N, k)`` float32 dense hash encodings (integer arithmetic in int64:
    ``a_j * x < 2^62`` for ``x < p``)."""
    h = (ids.long().unsqueeze(1) * a + b) % PRIME % hash_range
    if encoding == "uniform":
        return h.float() * (2.0 / (hash_range - 1)) - 1.0
    u1 = (h[:, 0::2].double() + 1.0) / hash_range  # (0, 1]: log is finite
    u2 = h[:, 1::2].double() / hash_range
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2.0 * torch.pi * u2
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).float()


def decode(x: Tensor, layers: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """The folded network: ``Mish(x W_l^T + b_l)`` per hidden layer, then the linear output layer."""
    for weight, bias in layers[:-1]:
        x = F.mish(F.linear(x, weight, bias))
    return F.linear(x, *layers[-1])


@dataclass(frozen=True)
class DHEKnobs(Knobs):
    num_hashes: int = 1024  # k hash values per id (the encoder's width)
    hash_range: int = 1_000_000  # m: hash values lie in [0, m)
    encoding: str = "uniform"  # uniform or gaussian
    hidden_dim: int = 64  # w, the decoder's width
    num_layers: int = 5  # hidden layers of the decoder
    hash_seed: int = 0

    def validate(self, embedding_dim: int) -> None:
        def positive_int(name: str, low: int = 1, high: int | None = None) -> int:
            value = getattr(self, name)
            if (
                isinstance(value, bool) or not isinstance(value, (int, np.integer))
                or value < low or (high is not None and value > high)
            ):  # fmt: skip
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ConfigError(f"method.{name}={value} must be an integer {bound}")
            return int(value)

        k = positive_int("num_hashes")
        positive_int("hash_range", 2, PRIME - 1)
        positive_int("hidden_dim")
        positive_int("num_layers")
        positive_int("hash_seed", 0)
        if self.encoding not in ENCODINGS:
            raise ConfigError(
                f"method.encoding={self.encoding} is unknown; use one of {', '.join(ENCODINGS)}"
            )
        if self.encoding == "gaussian" and k % 2:
            raise ConfigError(
                f"method.num_hashes={k} must be even with method.encoding=gaussian (Box-Muller "
                "turns pairs of hashes into pairs of Gaussians); use e.g. 1024"
            )


class DHEmbedding(CompressedEmbedding):
    """Deep Hash Embedding (see the module docstring); serving bits
    ``32 * ((k + 1) w + (L - 1)(w + 1) w + (w + 1) d)``.

    Each forward call hashes and decodes each distinct real id of the batch once (``torch.unique``),
    then gathers: faster, and batch-norm statistics are taken over the distinct ids of the batch
    (the paper normalises over the batch's examples). Padding (id 0) is never decoded: it reads a
    zero row, so it gets no gradient and does not enter the statistics. A training batch with a single
    distinct id normalises with the running statistics (batch statistics need two values). Init:
    Xavier-normal weights and zero biases (the reference implementation's initialiser).
    """

    #: Ids decoded at once by ``full_table`` (k float32 encodings each): bounds its memory.
    chunk_size = 4096
    #: Vocabularies whose encodings take at most this many floats keep them in memory after the
    #: first lookup (64 MiB; ml-100k's items: 1.7 M). Hashing ``k`` values per id is most of a
    #: step's cost on CPU; the cached values are the same numbers, so results do not change, and
    #: nothing is stored in checkpoints or the artifact. Larger vocabularies hash on the fly.
    encoding_cache_limit = 2**24

    knob_type = DHEKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        check_universal_hash_ids(self.num_embeddings, "DHE")
        widths = [self.num_hashes] + [self.hidden_dim] * self.num_layers + [self.embedding_dim]
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(self.hidden_dim) for _ in range(self.num_layers))
        for linear in self.linears:
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        a, b = hash_coefficients(self.hash_seed, self.num_hashes)
        self.register_buffer("hash_a", a, persistent=False)
        self.register_buffer("hash_b", b, persistent=False)
        self.register_buffer("encodings", None, persistent=False)

    # ---------------------------------------------------------------- network
    def folded_layers(self) -> list[tuple[Tensor, Tensor]]:
        """``(weight, bias)`` of each linear layer with its batch norm (running statistics)
        folded in: the network eval mode and the serving artifact compute."""
        layers = []
        for linear, norm in zip(self.linears, self.norms):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            layers.append(
                (
                    linear.weight * scale.unsqueeze(1),
                    (linear.bias - norm.running_mean) * scale + norm.bias,
                )
            )
        layers.append((self.linears[-1].weight, self.linears[-1].bias))
        return layers

    def _encode(self, ids: Tensor) -> Tensor:
        """Dense hash encodings of real ids, from the cache when the vocabulary is small enough."""
        if self.num_embeddings * self.num_hashes > self.encoding_cache_limit:
            return encode(ids, self.hash_a, self.hash_b, self.hash_range, self.encoding)
        if self.encodings is None or self.encodings.device != ids.device:
            every = torch.arange(self.num_embeddings, device=ids.device)
            self.encodings = encode(every, self.hash_a, self.hash_b, self.hash_range, self.encoding)
        return self.encodings[ids]

    def _embed(self, ids: Tensor) -> Tensor:
        """Embeddings of distinct real ids ``(U,)``."""
        x = self._encode(ids)
        if not self.training:
            return decode(x, self.folded_layers())
        batch_stats = ids.numel() > 1
        for linear, norm in zip(self.linears, self.norms):
            x = linear(x)
            if batch_stats:
                x = norm(x)
            else:
                x = F.batch_norm(
                    x,
                    norm.running_mean,
                    norm.running_var,
                    norm.weight,
                    norm.bias,
                    False,
                    0.0,
                    norm.eps,
                )
            x = F.mish(x)
        return self.linears[-1](x)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        if uniq.numel() and uniq[0] == 0:  # padding reads a zero row: no gradient, no statistics
            rows = self._embed(uniq[1:]) if uniq.numel() > 1 else None
            zero = torch.zeros(1, self.embedding_dim, device=flat.device)
            rows = zero if rows is None else torch.cat([zero.to(rows.dtype), rows])
        else:
            rows = self._embed(uniq)
        return rows[inverse].reshape(*ids.shape, self.embedding_dim)

    @classmethod
    def _table(
        cls, num_embeddings: int, layers: Sequence[tuple[Tensor, Tensor]], meta: Mapping[str, Any]
    ) -> Tensor:
        """The served table from the folded network, decoded ``chunk_size`` ids at a time."""
        device = layers[0][0].device
        a, b = (
            t.to(device) for t in hash_coefficients(int(meta["hash_seed"]), int(meta["num_hashes"]))
        )
        parts = [torch.zeros(1, layers[-1][0].shape[0], device=device)]
        for start in range(1, num_embeddings, cls.chunk_size):
            ids = torch.arange(start, min(start + cls.chunk_size, num_embeddings), device=device)
            x = encode(ids, a, b, int(meta["hash_range"]), str(meta["encoding"]))
            parts.append(decode(x, layers))
        return torch.cat(parts)

    def full_table(self) -> Tensor:
        if self.training:  # batch statistics over every real id
            return self.forward(torch.arange(self.num_embeddings, device=self._device()))
        return self._table(self.num_embeddings, self.folded_layers(), self.knobs())

    def serving_bits(self) -> int:
        return dhe_bits(self.num_hashes, self.hidden_dim, self.num_layers, self.embedding_dim)

    def serving_tensors(self) -> dict[str, Tensor]:
        tensors = {}
        with torch.no_grad():
            for i, (weight, bias) in enumerate(self.folded_layers()):
                tensors[f"weight{i}"] = weight.detach().float().cpu().contiguous()
                tensors[f"bias{i}"] = bias.detach().float().cpu().contiguous()
        return tensors

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        layers = [
            (tensors[f"weight{i}"].float(), tensors[f"bias{i}"].float())
            for i in range(int(meta["num_layers"]) + 1)
        ]
        return cls._table(int(meta["num_embeddings"]), layers, meta)

    @classmethod
    def solve_budget(
        cls,
        budget: float,
        num_ids: int,
        embedding_dim: int,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> dict[str, Any]:
        """Largest ``hidden_dim`` whose folded network fits ``budget * 32*n*d`` (depth, ``k`` fixed;
        the size grows strictly with the width). DHE's size does not depend on ``n``: small
        vocabularies need a large budget."""
        given = cls.check_knobs(embedding_dim, **knobs)
        k, layers = int(given.num_hashes), int(given.num_layers)
        full = 32 * num_ids * embedding_dim

        def fits(width: int) -> bool:
            return dhe_bits(k, width, layers, embedding_dim) / full <= budget

        if not fits(1):
            smallest = dhe_bits(k, 1, layers, embedding_dim) / full
            raise BudgetError.unreachable(
                cls.__name__,
                budget,
                num_ids,
                smallest,
                "hidden_dim=1",
                "or fewer method.num_hashes",
            )
        lo, hi = 1, 2
        while fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return {**knobs, "hidden_dim": lo}
