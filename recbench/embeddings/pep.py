"""PEP, Plug-in Embedding Pruning (Liu et al., "Learnable Embedding Sizes for Recommender Systems",
ICLR 2021): learnable soft thresholds prune individual weights, then the pruned table is retrained.

**Search phase.** The table ``V`` is re-parameterised as ``V_hat = sign(V) * ReLU(|V| - g(s))`` with
``g = sigmoid`` and trainable thresholds ``s`` (the paper's Eq. 4). Weights below their threshold are
exactly zero and receive no gradient; ``s`` grows (or shrinks) with the task gradient, so the sparsity
is learned. ``granularity`` picks the threshold sharing of the paper's variants: ``global`` (one ``s``),
``dimension`` (one per embedding dimension), ``feature`` (one per id) or ``feature_dimension`` (one per
weight). ``s`` starts at ``threshold_init`` (a negative value: ``g(s)`` is then far below the weights,
nothing is pruned at first).

**Retraining.** After ``search_epochs`` training epochs, or as soon as the learned sparsity reaches the
target (checked at the end of each epoch), the layer freezes its mask ``M = (V_hat != 0)`` and, like the
paper (a lottery-ticket retrain), rewinds ``V`` to its *initial* values (``rewind: false`` keeps the
searched values instead); from then on ``V_hat = V * M`` with ``M`` fixed. The rewind happens in place
inside ``on_epoch_end``, which returns ``V`` so the training loop drops its Adam moments (they belong to
the searched weights; a fresh optimizer state is what a separate retraining run would start with).

**Budget.** ``target_sparsity`` (fraction of the ``n*d`` weights that are zero; ``method.budget`` sets it
through ``solve_budget``) caps the number of stored weights at
``max_nonzeros = n*d - ceil(target_sparsity * n*d)``. The search stops when the soft thresholds alone
reach it; if they have not when the search ends, the mask keeps the ``max_nonzeros`` largest
``|V_hat|`` (a magnitude cut: the paper instead keeps training until the target is reached). The
served table in eval mode always respects the cap, so a run that ends during the search (fewer epochs
than ``search_epochs``) still serves a table within its budget.

**Serving.** The served table is stored as CSR over the ``n`` real ids: the non-zero values (float32),
their column indices (``ceil(log2 d)`` bits each, bit-packed) and ``n + 1`` row pointers
(``ceil(log2(nnz + 1))`` bits each, bit-packed; split into a low 16-bit and a high part when wider than
the packer's 16 bits). Serving bits ``32*nnz + nnz*ceil(log2 d) + (n+1)*ceil(log2(nnz+1))``, where
``nnz`` is the number of non-zero weights of the served table, so the formula follows the layer as it
prunes. The thresholds and the initial weights are training-only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.embeddings.packing import MAX_BITS, pack_bits, unpack_bits
from recbench.embeddings.vq import version_key
from recbench.errors import ConfigError

log = logging.getLogger(__name__)

GRANULARITIES = ("global", "dimension", "feature", "feature_dimension")


def csr_bits(nnz: int, num_ids: int, embedding_dim: int) -> int:
    """Bits of a CSR matrix with ``num_ids`` rows, ``embedding_dim`` columns and ``nnz`` stored
    values: float32 values, ``ceil(log2 d)``-bit column indices, ``n + 1`` row pointers of
    ``ceil(log2(nnz + 1))`` bits."""
    column_bits = (int(embedding_dim) - 1).bit_length()
    pointer_bits = int(nnz).bit_length()
    return 32 * nnz + nnz * column_bits + (int(num_ids) + 1) * pointer_bits


def pack_wide(values: Tensor, bits: int) -> list[Tensor]:
    """Bit-pack non-negative integers of ``bits`` bits (any width, 0 included) as one packed tensor
    per 16-bit slice, least significant slice first: ``ceil(bits / 16)`` tensors (none for 0 bits)."""
    parts = []
    for low in range(0, bits, MAX_BITS):
        width = min(MAX_BITS, bits - low)
        parts.append(pack_bits((values >> low) & ((1 << width) - 1), width))
    return parts


def unpack_wide(parts: list[Tensor], bits: int, count: int) -> Tensor:
    """Inverse of ``pack_wide``."""
    out = torch.zeros(count, dtype=torch.int64)
    for index, low in enumerate(range(0, bits, MAX_BITS)):
        width = min(MAX_BITS, bits - low)
        out |= unpack_bits(parts[index].cpu(), width, count) << low
    return out


def soft_threshold(values: Tensor, thresholds: Tensor) -> Tensor:
    """PEP's re-parameterisation ``sign(v) * ReLU(|v| - sigmoid(s))``."""
    return torch.sign(values) * torch.relu(values.abs() - torch.sigmoid(thresholds))


@dataclass(frozen=True)
class PEPKnobs(Knobs):
    granularity: str = "feature_dimension"  # one of GRANULARITIES: what one threshold covers
    threshold_init: float = -8.0  # initial s; the threshold is sigmoid(s)
    search_epochs: int = 10  # epochs of the threshold search before the mask is frozen
    target_sparsity: float | None = 0.8  # fraction of zero weights kept at most; null: as found
    rewind: bool = True  # retrain from the initial weights under the mask (lottery ticket)
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"method.granularity={self.granularity} is unknown; use one of {', '.join(GRANULARITIES)}"
            )
        threshold_init = self.threshold_init
        if not isinstance(threshold_init, int | float) or isinstance(threshold_init, bool):
            raise ConfigError(f"method.threshold_init={threshold_init} must be a number, e.g. -8")
        epochs = self.search_epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"method.search_epochs={epochs} must be an integer >= 1, e.g. 10")
        target = self.target_sparsity
        if target is not None and (
            not isinstance(target, int | float) or isinstance(target, bool) or not 0 <= target <= 1
        ):
            raise ConfigError(
                f"method.target_sparsity={target} must be in [0, 1] (fraction of zero weights) or null"
            )
        if not isinstance(self.rewind, bool):
            raise ConfigError(f"method.rewind={self.rewind} must be true or false")
        init_std = self.init_std
        if not isinstance(init_std, int | float) or init_std <= 0:
            raise ConfigError(f"method.init_std={init_std} must be > 0; use e.g. 0.01")


class PEPEmbedding(CompressedEmbedding):
    """A table pruned weight by weight with learned soft thresholds, then retrained under its mask;
    served as CSR: ``32*nnz + nnz*ceil(log2 d) + (n+1)*ceil(log2(nnz+1))`` bits."""

    knob_type = PEPKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        total = self.num_ids * self.embedding_dim
        self.max_nonzeros: int | None = None
        if self.target_sparsity is not None:
            zeros = min(total, math.ceil(self.target_sparsity * total - 1e-6))
            self.max_nonzeros = total - max(0, zeros)
        weight = torch.randn(self.num_embeddings, self.embedding_dim) * self.init_std
        weight[0] = 0.0
        self.weight = nn.Parameter(weight)
        shape = {
            "global": (1,),
            "dimension": (self.embedding_dim,),
            "feature": (self.num_embeddings, 1),
            "feature_dimension": (self.num_embeddings, self.embedding_dim),
        }[self.granularity]
        self.threshold = nn.Parameter(torch.full(shape, self.threshold_init))
        self.register_buffer("initial", weight.clone())  # the lottery-ticket rewind point
        self.register_buffer(
            "mask", torch.ones(self.num_embeddings, self.embedding_dim, dtype=torch.bool)
        )
        self.register_buffer("retraining", torch.zeros((), dtype=torch.bool))
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: Tensor | None = None

    # ---------------------------------------------------------------- pruning
    def _thresholds(self, ids: Tensor | None) -> Tensor:
        """Thresholds broadcastable to the rows of ``ids`` (None = every id)."""
        if self.granularity in ("feature", "feature_dimension"):
            # a row gather (embedding backward), much cheaper than advanced indexing's index_put
            return (
                self.threshold
                if ids is None
                else torch.nn.functional.embedding(ids, self.threshold)
            )
        return self.threshold

    def _pruned_rows(self, ids: Tensor | None) -> Tensor:
        rows = self.weight if ids is None else self._lookup(ids, self.weight)
        if bool(self.retraining):
            mask = self.mask if ids is None else self.mask[ids]
            return rows * mask.to(rows.dtype)
        return soft_threshold(rows, self._thresholds(ids))

    def _served(self) -> Tensor:
        """The served ``(n + 1, d)`` table: the pruned weights, cut to the ``max_nonzeros`` largest
        magnitudes when the soft thresholds leave more (cached until a parameter or buffer changes)."""
        key = version_key(self.weight, self.threshold, self.mask, self.retraining)
        if key is not None and key == self._cache_key and self._cache is not None:
            return self._cache
        with torch.no_grad():
            table = self._pruned_rows(None).detach().clone()
            table[0] = 0.0
            table = table + 0.0  # -0.0 -> 0.0: the sign of a pruned zero is not stored
            if self.max_nonzeros is not None:
                real = table[1:].reshape(-1)
                nonzero = int(torch.count_nonzero(real))
                if nonzero > self.max_nonzeros:
                    keep = torch.topk(real.abs(), self.max_nonzeros, sorted=False).indices
                    cut = torch.zeros_like(real)
                    cut[keep] = real[keep]
                    table[1:] = cut.view(self.num_ids, self.embedding_dim)
        self._cache_key, self._cache = key, table
        return table

    def sparsity(self) -> float:
        """Fraction of the ``n*d`` weights that are zero in the served table."""
        nnz = int(torch.count_nonzero(self._served()[1:]))
        return 1.0 - nnz / (self.num_ids * self.embedding_dim)

    def on_epoch_end(self, epoch: int) -> list[nn.Parameter]:
        """End the search after ``search_epochs`` epochs or once the soft thresholds reach
        ``target_sparsity``: freeze the mask and (``rewind``) reset the weights to their initial
        values; returns the weights so the loop drops their optimizer state."""
        if bool(self.retraining):
            return []
        with torch.no_grad():
            soft = soft_threshold(self.weight, self._thresholds(None))[1:]
            learned = int(torch.count_nonzero(soft))
            reached = self.max_nonzeros is not None and learned <= self.max_nonzeros
            if epoch < self.search_epochs and not reached:
                return []
            log.info(
                "PEP: search ends after epoch %d at learned sparsity %.4f (target %s); mask frozen, "
                "%s",
                epoch,
                1 - learned / soft.numel(),
                self.target_sparsity,
                "weights rewound to their initial values" if self.rewind else "weights kept",
            )
            self.mask.copy_(self._served() != 0)
            if self.rewind:
                self.weight.copy_(self.initial)
            self.retraining.fill_(True)
        return [self.weight]

    # ---------------------------------------------------------------- contract
    def forward(self, ids: Tensor) -> Tensor:
        if not self.training:
            return self._served()[ids]
        return self._zero_padding(ids, self._pruned_rows(ids))

    def full_table(self) -> Tensor:
        if not self.training:
            return self._served()
        return self._zero_padding(torch.arange(self.num_embeddings, device=self.weight.device),
                                  self._pruned_rows(None))  # fmt: skip

    def nonzeros(self) -> int:
        """Stored values ``nnz`` of the served table."""
        return int(torch.count_nonzero(self._served()[1:]))

    def serving_bits(self) -> int:
        return csr_bits(self.nonzeros(), self.num_ids, self.embedding_dim)

    def serving_meta(self) -> dict[str, Any]:
        return {**super().serving_meta(), "nnz": self.nonzeros()}

    def serving_tensors(self) -> dict[str, Tensor]:
        table = self._served()[1:].detach().cpu()
        nonzero = table != 0
        rows, columns = nonzero.nonzero(as_tuple=True)  # row-major order
        nnz = int(rows.numel())
        pointers = torch.zeros(self.num_ids + 1, dtype=torch.int64)
        pointers[1:] = torch.cumsum(torch.bincount(rows, minlength=self.num_ids), 0)
        out = {"values": table[rows, columns].to(torch.float32).contiguous()}
        column_bits = (self.embedding_dim - 1).bit_length()
        for index, part in enumerate(pack_wide(columns, column_bits)):
            out[f"columns_{index}"] = part
        for index, part in enumerate(pack_wide(pointers, nnz.bit_length())):
            out[f"row_pointers_{index}"] = part
        return out

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        n, d, nnz = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"]), int(meta["nnz"])
        values = tensors["values"].to(torch.float32).cpu()
        column_bits, pointer_bits = (d - 1).bit_length(), nnz.bit_length()
        columns = unpack_wide(_parts(tensors, "columns"), column_bits, nnz)
        pointers = unpack_wide(_parts(tensors, "row_pointers"), pointer_bits, n + 1)
        rows = torch.repeat_interleave(torch.arange(n), pointers[1:] - pointers[:-1])
        table = torch.zeros(n + 1, d, dtype=torch.float32)
        table[rows + 1, columns] = values
        return table

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
        """Choose ``target_sparsity``: the largest ``nnz`` whose CSR size fits ``budget * 32*n*d``
        (every budget > 0 fits: an empty table stores nothing), as the fraction of zeros
        ``1 - nnz / (n*d)``."""
        n, d = int(num_ids), int(embedding_dim)
        limit = budget * 32 * n * d
        low, high = 0, n * d  # csr_bits is increasing in nnz: binary search the largest fit
        while low < high:
            middle = (low + high + 1) // 2
            if csr_bits(middle, n, d) <= limit:
                low = middle
            else:
                high = middle - 1
        return {**knobs, "target_sparsity": 1.0 - low / (n * d)}


def _parts(tensors: Mapping[str, Tensor], prefix: str) -> list[Tensor]:
    return [
        tensors[f"{prefix}_{i}"] for i in range(sum(k.startswith(prefix + "_") for k in tensors))
    ]
