"""The embedding contract every compression method implements.

A method is an ``nn.Module`` that Hydra builds from ``conf/method/<name>.yaml`` as a partial
(``_target_`` + ``_partial_: true``); ``run.py`` finishes it once the data is known with
``factory(num_embeddings=..., embedding_dim=..., counts=...)``.

Id conventions (shared by every method):

* ``num_embeddings`` counts every id including the padding id 0, exactly like
  ``nn.Embedding(n + 1, d, padding_idx=0)``. Real ids are ``1 .. num_embeddings - 1``.
* Real ids are assigned by descending training frequency (1 = most popular), so frequency tiers are
  contiguous id ranges.
* ``forward(0)`` is the zero vector; padding never shares storage with a real id and is never stored:
  ``serving_bits()`` is computed over the ``n = num_embeddings - 1`` real ids, which is the ``n`` of the
  serving-size formulas in docs/design.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.errors import ConfigError

#: What ``instantiate(cfg.method)`` returns: a partial that builds one embedding layer.
EmbeddingFactory = Callable[..., "CompressedEmbedding"]


class CompressedEmbedding(nn.Module):
    """Base class of every embedding method: ids of any shape -> vectors, plus an exact serving size.

    Subclasses implement ``forward`` and ``serving_bits``; ``full_table`` defaults to a lookup of every
    id and can be overridden where a method has a cheaper way to materialise its table.
    """

    #: True for methods whose construction reads ``counts`` (frequency tiers, mixed dimensions).
    frequency_aware: ClassVar[bool] = False

    def __init__(
        self, num_embeddings: int, embedding_dim: int, *, counts: Tensor | None = None
    ) -> None:
        super().__init__()
        if int(num_embeddings) < 2:
            raise ConfigError(
                f"num_embeddings={num_embeddings} leaves no real id (id 0 is padding); "
                "the vocabulary must hold at least one real id"
            )
        if int(embedding_dim) < 1:
            raise ConfigError(f"embedding_dim={embedding_dim} must be >= 1")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        if counts is not None:
            counts = torch.as_tensor(counts, dtype=torch.long).cpu()
            if counts.shape != (self.num_embeddings,):
                raise ConfigError(
                    f"counts has shape {tuple(counts.shape)} but the layer has "
                    f"{self.num_embeddings} ids (padding included); pass one count per id"
                )
        self.counts: Tensor | None = counts
        self._aux_terms: list[Tensor] = []
        #: Set by ``train.sparse``: lookups through ``_lookup`` then produce sparse gradients.
        self.sparse_grad = False

    # ----------------------------------------------------------------- contract
    @property
    def num_ids(self) -> int:
        """Number of real ids ``n`` (padding excluded): the ``n`` of the serving-size formulas."""
        return self.num_embeddings - 1

    def forward(self, ids: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Map ids of any shape to ``(*ids.shape, embedding_dim)``; id 0 maps to zeros."""
        raise NotImplementedError

    def full_table(self) -> Tensor:
        """The ``(num_embeddings, embedding_dim)`` table as it is served (row 0 is zeros)."""
        ids = torch.arange(self.num_embeddings, device=self._device())
        return self.forward(ids)

    def serving_bits(self) -> int:  # pragma: no cover - abstract
        """Exact number of bits an inference server stores for this layer."""
        raise NotImplementedError

    def aux_loss(self) -> Tensor:
        """Extra training loss accumulated by ``forward`` calls since the last call (then reset).

        Methods with a commitment or codebook loss (DPQ, MGQE) append terms with ``_add_aux``
        in training mode; every other method returns zero.
        """
        if not self._aux_terms:
            return torch.zeros((), device=self._device())
        total = torch.stack([t.reshape(()) for t in self._aux_terms]).sum()
        self._aux_terms = []
        return total

    # ------------------------------------------------------------ serving form
    def serving_tensors(self) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """The tensors an inference server stores for this layer, in their stored form.

        Float tensors are float32; integer codes are bit-packed (``recbench.embeddings.packing``).
        Their total size in bits equals ``serving_bits()`` up to byte padding of packed tensors.
        Anything recomputable (hash functions, tier boundaries) goes in ``serving_meta`` instead.
        """
        raise NotImplementedError

    def serving_meta(self) -> dict[str, Any]:
        """JSON-serialisable facts needed to decode ``serving_tensors`` (sizes, knobs, seeds)."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            **self.knobs(),
        }

    @classmethod
    def table_from_serving(
        cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
    ) -> Tensor:  # pragma: no cover - abstract
        """Rebuild the served ``(num_embeddings, embedding_dim)`` table from the artifact alone.

        Must equal ``full_table()`` of the exporting layer in eval mode (row 0 zeros).
        """
        raise NotImplementedError

    def knobs(self) -> dict[str, Any]:
        """The resolved knobs of this layer (recorded with each run); subclasses extend it."""
        return {}

    @classmethod
    def check_knobs(cls, embedding_dim: int, **knobs: Any) -> None:
        """Validate knobs before any data is loaded; raise ``ConfigError`` with the fix.

        Called by ``run.py`` with the method's YAML knobs (``budget`` excluded). The default accepts
        everything; methods with impossible settings override it.
        """

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
        """Knobs that make one ``num_ids x embedding_dim`` layer fit ``budget`` (a fraction of its
        full float32 size ``32 * num_ids * embedding_dim``) as closely as possible from below.

        ``knobs`` are the YAML's other knobs (the solver keeps those it does not choose). Returns the
        updated knobs; raises ``ConfigError`` naming the smallest achievable budget when none fits.
        Methods without a size knob (full) accept only ``budget >= 1``.
        """
        if budget >= 1.0:
            return dict(knobs)
        raise ConfigError(
            f"method.budget={budget} is impossible for {cls.__name__}: its size is fixed at 1.0 of "
            "the full table; use a budget >= 1 or a compressing method"
        )

    def on_epoch_end(self, epoch: int) -> list[nn.Parameter]:
        """Training-time hook: ``fit`` calls it on every embedding layer after each training epoch
        (``epoch`` counts from 1), before validation. Default: nothing.

        Methods whose structure changes during training use it (CCE re-clusters its tables, PEP
        freezes its pruning mask and rewinds the weights). It returns the parameters whose values
        it replaced: their optimizer state (Adam moments) describes the old values, so the loop
        drops it and the optimizer starts them afresh. ``serving_bits()`` must stay exact after it.
        """
        return []

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Tables read only through ``_lookup`` (row gathers), which ``train.sparse`` may train
        with sparse gradients; ``nn.Embedding`` children are found separately. Default: none."""
        return []

    # ------------------------------------------------------------------ helpers
    def _lookup(self, index: Tensor, table: Tensor) -> Tensor:
        """Row gather ``table[index]`` with sparse gradients when ``sparse_grad`` is set."""
        return F.embedding(index, table, sparse=self.sparse_grad)

    def _add_aux(self, term: Tensor) -> None:
        if self.training:
            self._aux_terms.append(term)

    def _device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @staticmethod
    def _zero_padding(ids: Tensor, vectors: Tensor) -> Tensor:
        """Zero the rows that belong to the padding id 0."""
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)


def embedding_layers(module: nn.Module) -> Mapping[str, CompressedEmbedding]:
    """All top-level compressed embedding layers inside ``module`` (nested ones are not repeated)."""
    found: dict[str, CompressedEmbedding] = {}
    for name, child in module.named_modules():
        if isinstance(child, CompressedEmbedding) and not any(
            name.startswith(prefix + ".") for prefix in found
        ):
            found[name] = child
    return found


class BudgetedFactory:
    """Wraps a method's factory so that each layer's size knob is solved for ``budget`` (a fraction
    of that layer's full float32 size) once the layer's shape and counts are known.

    Why per layer: the user and item tables of a backbone differ in size, and an equal-memory
    comparison must hold for each table, not just on average. The solved knobs are what the layer's
    ``knobs()`` then reports, so every run records what the solver chose.
    """

    def __init__(self, factory: Callable[..., CompressedEmbedding], budget: float) -> None:
        if not budget > 0:
            raise ConfigError(f"method.budget={budget} must be > 0 (a fraction of the full size)")
        self.factory = factory
        self.budget = float(budget)

    def __call__(
        self, num_embeddings: int, embedding_dim: int, *, counts: Tensor | None = None
    ) -> CompressedEmbedding:
        cls = getattr(self.factory, "func", self.factory)
        knobs = dict(getattr(self.factory, "keywords", {}) or {})
        solved = cls.solve_budget(self.budget, num_embeddings - 1, embedding_dim, counts, **knobs)
        return cls(num_embeddings, embedding_dim, counts=counts, **solved)
NON_KNOB_KEYS: tuple[str, ...] = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_", "budget")
