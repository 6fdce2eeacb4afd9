"""Learned low precision: quantization-aware training with a learned step size (LSQ, Esser et al.,
ICLR 2020), applied to embedding rows as in ALPT (Li et al., AAAI 2023, "Adaptive Low-Precision
Training for Embeddings in Click-Through Rate Prediction").

Every weight is served as a signed ``b``-bit integer times a step size ``alpha`` shared by its row
(``granularity: row``, one step per id, ALPT's choice) or by its column (``granularity: column``,
one step per embedding dimension):

    v_hat = round(clamp(v / alpha, -Q_N, Q_P)) * alpha,     Q_N = 2^(b-1),  Q_P = 2^(b-1) - 1.

Training keeps the float weights ``v`` and the step sizes as parameters and quantizes in every
forward. The rounding is bridged with the straight-through estimator (gradient 1 for ``v`` inside
the clipping range, 0 outside), and the step size receives LSQ's gradient

    d v_hat / d alpha = -v/alpha + round(v/alpha)   inside,   -Q_N or Q_P   clipped,

multiplied by LSQ's gradient scale ``g = 1 / sqrt(N * Q_P)``, ``N`` = the number of weights that share
the step (``d`` for row steps, ``n`` for column steps). Step sizes start at LSQ's
``2 * mean(|v|) / sqrt(Q_P)`` over each group's initial weights.

Deviation from ALPT: ALPT stores the *training* weights in low precision too (with stochastic
rounding), to save training memory; here the float master weights are kept during training (LSQ),
since recbench measures the serving size. What is served is identical in form: codes + steps.

Serving: ``n * d`` codes of ``b`` bits (stored as ``code + Q_N`` in ``0 .. 2^b - 1``, bit-packed) and
the float32 steps (``n`` row steps or ``d`` column steps): ``b*n*d + 32*n`` (row) or ``b*n*d + 32*d``
(column) bits. In eval mode ``forward``/``full_table`` return exactly that served table (cached until
a parameter changes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs, tight_floor
from recbench.embeddings.packing import pack_bits, unpack_bits
from recbench.embeddings.vq import version_key
from recbench.errors import BudgetError, ConfigError

GRANULARITIES = ("row", "column")
MIN_BITS, MAX_BITS = 2, 8


def levels(bits: int) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of signed ``bits``-bit integers: codes run from ``-Q_N`` to ``Q_P``."""
    return 1 << (bits - 1), (1 << (bits - 1)) - 1


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward, ``scale * grad`` in the backward (LSQ's ``gradscale``).

    Written as ``x + (sx - sg(sx))`` rather than LSQ's ``(x - sx).detach() + sx`` so that the forward
    value is ``x`` bit for bit (``a - a == 0`` exactly), hence training and serving agree."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward, identity gradient in the backward (straight-through)."""
    return (x.round() - x).detach() + x


def init_steps(weights: Tensor, bits: int, granularity: str) -> Tensor:
    """LSQ's initial step ``2 * mean(|v|) / sqrt(Q_P)`` per group (row or column of ``weights``)."""
    _, q_p = levels(bits)
    mean_abs = weights.abs().mean(1 if granularity == "row" else 0)
    return (2.0 * mean_abs / math.sqrt(q_p)).clamp_min(1e-8)


def dequantize(codes: Tensor, steps: Tensor, bits: int, granularity: str) -> Tensor:
    """``(codes - Q_N) * step`` as float32 with the zero padding row prepended; ``codes`` are the
    unsigned stored codes ``(n, d)``. The same two float32 operations as the training forward."""
    q_n, _ = levels(bits)
    steps = steps.to(torch.float32)
    steps = steps.unsqueeze(1) if granularity == "row" else steps.unsqueeze(0)
    values = (codes.to(torch.int64) - q_n).to(torch.float32) * steps
    return torch.cat([values.new_zeros(1, values.shape[1]), values])


@dataclass(frozen=True)
class LearnedQuantKnobs(Knobs):
    bits: int = 8  # bits per stored value, 2..8
    granularity: str = "row"  # row (one step per id, ALPT) or column (one step per dimension)
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
            raise ConfigError(
                f"method.bits={bits} is not an integer in {MIN_BITS}..{MAX_BITS}; use 2, 4 or 8"
            )
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"method.granularity={self.granularity} is unknown; use row (one step per id, ALPT) "
                "or column (one step per dimension)"
            )
        init_std = self.init_std
        if not isinstance(init_std, int | float) or init_std <= 0:
            raise ConfigError(f"method.init_std={init_std} must be > 0; use e.g. 0.01")


class LearnedQuantEmbedding(CompressedEmbedding):
    """A float table trained through a ``bits``-bit quantizer with learned step sizes (LSQ/ALPT).

    Serving bits ``bits*n*d + 32*n`` (row steps) or ``bits*n*d + 32*d`` (column steps).
    """

    knob_type = LearnedQuantKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.q_n, self.q_p = levels(self.bits)
        self.weight = nn.Parameter(
            torch.randn(self.num_embeddings, self.embedding_dim) * self.init_std
        )
        with torch.no_grad():
            self.weight[0].zero_()
        real = self.weight.detach()[1:]
        if self.granularity == "row":  # row 0 (padding) gets a dummy step of 1, never served
            steps = torch.cat([torch.ones(1), init_steps(real, self.bits, "row")])
        else:
            steps = init_steps(real, self.bits, "column")
        self.step = nn.Parameter(steps)
        group = self.embedding_dim if self.granularity == "row" else self.num_ids
        #: LSQ's gradient scale ``1 / sqrt(N * Q_P)`` (N = weights per step).
        self.grad_scale = 1.0 / math.sqrt(group * self.q_p)
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------ quantization
    def _quantize(self, rows: Tensor, steps: Tensor) -> Tensor:
        """LSQ forward of ``rows (..., d)`` with their broadcastable ``steps``."""
        steps = grad_scale(steps, self.grad_scale)
        return round_ste(torch.clamp(rows / steps, -self.q_n, self.q_p)) * steps

    def _served(self) -> tuple[Tensor, Tensor]:
        """Unsigned codes ``(n, d)`` of the real ids and the served table (row 0 zeros), cached
        until the weights or the steps change."""
        key = version_key(self.weight, self.step)
        if key is not None and key == self._cache_key and self._cache is not None:
            return self._cache
        with torch.no_grad():
            steps = self._real_steps()
            broadcast = steps.unsqueeze(1) if self.granularity == "row" else steps.unsqueeze(0)
            signed = torch.clamp(self.weight[1:] / broadcast, -self.q_n, self.q_p).round()
            codes = signed.to(torch.int64) + self.q_n
            table = dequantize(codes, steps, self.bits, self.granularity)
        self._cache_key, self._cache = key, (codes, table)
        return codes, table

    def _real_steps(self) -> Tensor:
        """The served steps: ``(n,)`` for rows (padding's dummy dropped) or ``(d,)`` for columns."""
        return self.step.detach()[1:] if self.granularity == "row" else self.step.detach()

    # ---------------------------------------------------------------- contract
    def forward(self, ids: Tensor) -> Tensor:
        if not self.training:
            return self._served()[1][ids]
        rows = self._lookup(ids, self.weight)
        if self.granularity == "row":
            steps = torch.nn.functional.embedding(ids, self.step.unsqueeze(1))  # row gather
        else:
            steps = self.step
        return self._zero_padding(ids, self._quantize(rows, steps))

    def full_table(self) -> Tensor:
        if not self.training:
            return self._served()[1]
        return super().full_table()

    def serving_bits(self) -> int:
        n, d = self.num_ids, self.embedding_dim
        return self.bits * n * d + 32 * (n if self.granularity == "row" else d)

    def serving_tensors(self) -> dict[str, Tensor]:
        codes, _ = self._served()
        return {
            "codes": pack_bits(codes, self.bits).cpu(),
            "steps": self._real_steps().to(torch.float32).cpu().contiguous(),
        }

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        n, d, bits = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"]), int(meta["bits"])
        codes = unpack_bits(tensors["codes"], bits, n * d).reshape(n, d)
        return dequantize(codes, tensors["steps"], bits, str(meta["granularity"]))

    @classmethod
    def codes_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        """Stored codes of ids 1..n as an ``(n, d)`` int64 matrix (for the report's code-sharing
        heatmap, as for scalar quantization; with row steps equal codes need not mean equal values)."""
        n, d, bits = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"]), int(meta["bits"])
        return unpack_bits(tensors["codes"], bits, n * d).reshape(n, d).to(torch.int64)

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
        """Choose ``bits``: the largest in 2..8 whose serving bits fit ``budget * 32*n*d``
        (``granularity`` kept from the YAML)."""
        granularity = cls.check_knobs(embedding_dim, **{**knobs, "bits": MAX_BITS}).granularity
        n, d = int(num_ids), int(embedding_dim)
        overhead = 32 * (n if granularity == "row" else d)
        full = 32 * n * d
        fitting = [
            b for b in range(MIN_BITS, MAX_BITS + 1) if b * n * d + overhead <= budget * full
        ]
        if not fitting:
            size = MIN_BITS * n * d + overhead
            smallest = tight_floor(size / full, lambda b: size <= b * full)
            raise BudgetError.unreachable(
                cls.__name__, budget, n, smallest, f"bits={MIN_BITS}, granularity={granularity}"
            )
        return {**knobs, "bits": max(fitting)}
