"""Scalar quantization (SQ): the MGQE paper's two-step baseline (train a float table, then quantize).

Each value of the trained table is replaced by the nearest of ``2**bits`` evenly spaced levels between
a minimum and a maximum. ``granularity: column`` (the paper's variant, after TensorFlow's
``tf.quantization.quantize``) takes the min/max of each embedding dimension over the real ids;
``granularity: row`` takes the min/max of each id's row instead.

When the table is quantized: there is no post-training hook in the training loop, and none is needed.
The layer keeps the float table as its only parameter and follows one rule:

* training mode: ``forward``/``full_table`` use the float table (plain end-to-end training, step 1);
* eval mode: they use the dequantized table computed by ``quantize()`` from the *current* float
  weights (step 2).

So every evaluation (per-epoch validation, early stopping, the final test, the serving export) sees
exactly what would be served, and a checkpoint restored by the loop is re-quantized automatically.
``quantize()`` is cheap (one pass over the table) and cached: the cache is keyed on the weight
tensor's identity, device and in-place version counter, which every optimizer step and
``load_state_dict`` bump, so a stale table is never served and repeated calls are free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from recbench.embeddings.base import CompressedEmbedding, Knobs, tight_floor
from recbench.embeddings.full import padded_table
from recbench.embeddings.packing import MAX_BITS, pack_bits, unpack_bits
from recbench.errors import BudgetError, ConfigError

GRANULARITIES = ("column", "row")


class ScalarQuantState(NamedTuple):
    """The quantized form of the table of real ids (rows ``1..n``).

    ``codes`` are levels in ``0..2**bits-1`` of shape ``(n, d)``; value = ``codes * scale + offset``
    with ``offset``/``scale`` of shape ``(d,)`` (column) or ``(n,)`` (row). ``table`` is the
    dequantized ``(n + 1, d)`` table with the zero padding row, i.e. the served table.
    """

    codes: Tensor
    offset: Tensor
    scale: Tensor
    table: Tensor


def dequantize(codes: Tensor, offset: Tensor, scale: Tensor, granularity: str) -> Tensor:
    """``codes * scale + offset`` as float32 with the padding row prepended.

    The one formula used both by the layer and by ``table_from_serving``: two separately rounded
    float32 operations (no fused multiply-add), so the rebuilt table equals the served one bit for bit
    on any device.
    """
    if granularity == "row":
        offset, scale = offset.unsqueeze(1), scale.unsqueeze(1)
    values = codes.to(torch.float32) * scale.to(torch.float32) + offset.to(torch.float32)
    return torch.cat([values.new_zeros(1, values.shape[1]), values])


@dataclass(frozen=True)
class ScalarQuantKnobs(Knobs):
    bits: int = 8  # bits per stored value, 1..16
    granularity: str = "column"  # column (per-dimension min/max, the paper's) or row
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ConfigError(
                f"method.bits={bits} is not an integer in 1..{MAX_BITS}; use e.g. method.bits=8"
            )
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"method.granularity={self.granularity} is unknown; use column (per-dimension "
                "min/max, the paper's) or row"
            )
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0; use e.g. 0.01")


class ScalarQuantEmbedding(CompressedEmbedding):
    """A float ``n x d`` table trained as usual and served as ``bits``-bit uniform levels.

    Serving bits: ``n*d*bits + 2*32*d`` (column: per-dimension offset and step) or
    ``n*d*bits + 2*32*n`` (row: per-id offset and step). Initialised from N(0, init_std^2) like the
    full table (MGQE paper: std 0.01).
    """

    knob_type = ScalarQuantKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.weight_table = padded_table(self.num_embeddings, self.embedding_dim, self.init_std)
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: ScalarQuantState | None = None

    # ------------------------------------------------------------ quantization
    def quantize(self) -> ScalarQuantState:
        """Quantize the current float weights (idempotent; cached until the weights change).

        Levels are ``offset + k * scale`` for ``k = 0..2**bits-1`` with ``offset`` the minimum and
        ``offset + (2**bits-1) * scale`` the maximum of the group (column or row) over the real ids;
        each value goes to the nearest level, so the error is at most half a step. A constant group
        (max == min) gets scale 0 and code 0, which reproduces it exactly.
        """
        weight = self.weight_table.weight
        key = _version_key(weight, self.bits, self.granularity)
        if key is not None and key == self._cache_key and self._cache is not None:
            return self._cache
        with torch.no_grad():
            values = weight[1:].detach().to(torch.float32)
            dim = 0 if self.granularity == "column" else 1
            low = values.amin(dim)
            high = values.amax(dim)
            levels = (1 << self.bits) - 1
            # a tensor divisor: CUDA turns division by a Python scalar into multiplication by its
            # reciprocal, which would make the step (and the served table) depend on the device
            scale = (high - low) / torch.full_like(high, float(levels))
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            if self.granularity == "row":
                normalised = (values - low.unsqueeze(1)) / safe.unsqueeze(1)
            else:
                normalised = (values - low) / safe
            codes = normalised.round().clamp_(0, levels).to(torch.int64)
            table = dequantize(codes, low, scale, self.granularity)
        state = ScalarQuantState(codes=codes, offset=low, scale=scale, table=table)
        self._cache_key, self._cache = key, state
        return state

    # ---------------------------------------------------------------- contract
    def forward(self, ids: Tensor) -> Tensor:
        if self.training:
            return self.weight_table(ids)
        return self.quantize().table[ids]

    def full_table(self) -> Tensor:
        if self.training:
            return self.weight_table.weight
        return self.quantize().table

    def serving_bits(self) -> int:
        n, d = self.num_ids, self.embedding_dim
        groups = d if self.granularity == "column" else n
        return n * d * self.bits + 2 * 32 * groups

    def serving_tensors(self) -> dict[str, Tensor]:
        state = self.quantize()
        return {
            "codes": pack_bits(state.codes, self.bits).cpu(),
            "offset": state.offset.detach().to(torch.float32).cpu().contiguous(),
            "scale": state.scale.detach().to(torch.float32).cpu().contiguous(),
        }

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        n, d = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"])
        codes = unpack_bits(tensors["codes"], int(meta["bits"]), n * d).reshape(n, d)
        return dequantize(codes, tensors["offset"], tensors["scale"], str(meta["granularity"]))

    @classmethod
    def codes_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        """Quantisation levels of ids 1..n as an ``(n, d)`` int64 matrix (one code per dimension),
        for comparing items by codes as the MGQE paper's Figure 8 does for SQ. With the per-column
        scale equal levels mean equal values; with ``granularity=row`` they need not."""
        n, d = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"])
        return unpack_bits(tensors["codes"], int(meta["bits"]), n * d).reshape(n, d).to(torch.int64)

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
        """Choose ``bits``: the largest in 1..16 whose serving bits fit ``budget * 32*n*d``.

        ``granularity`` (and the other knobs) are kept from the YAML.
        """
        granularity = cls.check_knobs(embedding_dim, **{**knobs, "bits": 8}).granularity
        n, d = int(num_ids), int(embedding_dim)
        full = 32 * n * d
        overhead = 2 * 32 * (d if granularity == "column" else n)
        fitting = [b for b in range(1, MAX_BITS + 1) if n * d * b + overhead <= budget * full]
        if not fitting:
            smallest = tight_floor(
                (n * d + overhead) / full, lambda b: n * d + overhead <= b * full
            )
            raise BudgetError.unreachable(
                cls.__name__, budget, n, smallest, f"bits=1, granularity={granularity}"
            )
        return {**knobs, "bits": max(fitting)}


def _version_key(tensor: Tensor, *extra: Any) -> tuple[Any, ...] | None:
    """Identity + in-place version of ``tensor`` (None when untracked, e.g. an inference tensor)."""
    try:
        version = tensor._version
    except RuntimeError:
        return None
    return (id(tensor), tensor.data_ptr(), tensor.device, tuple(tensor.shape), version, *extra)
