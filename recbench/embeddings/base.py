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

import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, ClassVar, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.errors import BudgetError, ConfigError

#: What ``instantiate(cfg.method)`` returns: a partial that builds one embedding layer.
EmbeddingFactory = Callable[..., "CompressedEmbedding"]

K = TypeVar("K", bound="Knobs")


@dataclass(frozen=True)
class Knobs:
    """A method's knobs, typed: the field defaults are THE defaults (the layer's ``__init__`` takes
    ``**knobs`` and never repeats them) and ``validate`` holds every check that needs no data.

    Why one class: defaults written twice (``__init__`` and ``check_knobs``) drift apart; here the
    YAML, ``check_knobs`` (before data loads), the constructor and ``knobs()`` (the record) read the
    same fields. A subclass per method lives beside its layer and is named by the layer's
    ``knob_type``.
    """

    def validate(self, embedding_dim: int) -> None:
        """Raise ``ConfigError`` with a one-line message that names the knob (``method.<name>``)
        and the fix. The default checks nothing beyond the field types."""

    @classmethod
    def parse(cls: type[K], given: Mapping[str, Any], owner: str) -> K:
        """The knobs ``given`` (the rest at their defaults); an unknown key fails with the nearest
        valid one, as a mistyped key of any other config node does."""
        names = [f.name for f in fields(cls)]
        unknown = [str(k) for k in given if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
            hint = f"did you mean method.{close[0]}? " if close else ""
            raise ConfigError(
                f"unknown key 'method.{unknown[0]}' for {owner}; {hint}valid keys: "
                f"{', '.join(names) or '(none)'}"
            )
        return cls(**given)

    def check_types(self) -> None:
        """Each value matches its field's annotation (ints may not be booleans; a float field
        takes an int); raises ``ConfigError`` naming the knob and the expected type."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, expected = getattr(self, f.name), hints[f.name]
            if not _matches(value, expected):
                default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                raise ConfigError(
                    f"method.{f.name}={value!r} must be {_describe(expected)}; the default is "
                    f"method.{f.name}={default!r}"
                )

    def coerced(self: K) -> K:
        """The same knobs as plain Python values of their field types (numpy and integral-float
        ints to int, ints to float for number fields, YAML lists to lists), so that layers and the
        record (``knobs()``, JSON) never see a ``ListConfig`` or a numpy scalar."""
        hints = typing.get_type_hints(type(self))
        return replace(
            self, **{f.name: _coerce(getattr(self, f.name), hints[f.name]) for f in fields(self)}
        )


def _matches(value: Any, expected: Any) -> bool:
    """``value`` fits the annotation ``expected`` (the subset knobs use: scalars, unions, lists)."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if origin in (list, tuple):
        (item, *_) = typing.get_args(expected) or (Any,)
        sequence = isinstance(value, Sequence) and not isinstance(value, str)  # ListConfig too
        return sequence and all(_matches(v, item) for v in value)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:  # an integral float (16.0) passes, as the knob checks always let it
        integral = isinstance(value, float | np.floating) and float(value).is_integer()
        return (isinstance(value, int | np.integer) or integral) and not isinstance(value, bool)
    if expected is float:
        numbers = int | float | np.integer | np.floating
        return isinstance(value, numbers) and not isinstance(value, bool)
    return isinstance(value, expected)


def _coerce(value: Any, expected: Any) -> Any:
    """``value`` (which ``_matches`` ``expected``) as the plain Python type of the annotation."""
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        arg = next(a for a in typing.get_args(expected) if _matches(value, a))
        return _coerce(value, arg)
    if origin in (list, tuple):
        (item, *_) = typing.get_args(expected) or (Any,)
        return [_coerce(v, item) for v in value]
    if expected in (int, float, str, bool):
        return expected(value)
    return value


def _describe(expected: Any) -> str:
    """``an integer or null``: an annotation in words."""
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    if origin in (list, tuple):
        (item, *_) = typing.get_args(expected) or (Any,)
        return f"a list (each {_describe(item)})"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if expected is type(None):
        return "null"
    return words.get(expected, getattr(expected, "__name__", str(expected)))


class CompressedEmbedding(nn.Module):
    """Base class of every embedding method: ids of any shape -> vectors, plus an exact serving size.

    Subclasses implement ``forward`` and ``serving_bits``; ``full_table`` defaults to a lookup of every
    id and can be overridden where a method has a cheaper way to materialise its table.
    """

    #: True for methods whose construction reads ``counts`` (frequency tiers, mixed dimensions).
    frequency_aware: ClassVar[bool] = False
    #: The method's knobs (defaults and checks); ``check_knobs`` and ``knobs()`` are built from it.
    knob_type: ClassVar[type[Knobs]] = Knobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        """Checks the shape and counts, then the knobs (``check_knobs``): each field of
        ``knob_type`` becomes an attribute of the same name, as given or at its default (a
        subclass may then resolve it, e.g. ``num_buckets`` from ``compression_ratio``), and
        ``given_knobs`` keeps the validated knobs as given."""
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
        self.given_knobs = self.check_knobs(self.embedding_dim, **knobs)
        for f in fields(self.given_knobs):
            setattr(self, f.name, getattr(self.given_knobs, f.name))
        self._aux_terms: list[Tensor] = []
        #: Set by ``enable_sparse_gradients``: ``_lookup`` then gives sparse gradients.
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

    @classmethod
    def codes_from_serving(
        cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
    ) -> Tensor:  # pragma: no cover - abstract
        """The ``(n, positions)`` integer codes of the real ids, from the artifact alone; only
        methods that store codes (``stores_codes``) implement it."""
        raise NotImplementedError(f"{cls.__name__} stores no integer codes")

    @classmethod
    def stores_codes(cls) -> bool:
        """Whether the artifact holds integer codes per id (scalar and learned quantisation, DPQ,
        MGQE): true exactly when the method implements ``codes_from_serving``. The code-similarity
        report asks this rather than knowing the methods."""
        own = cls.codes_from_serving.__func__  # type: ignore[attr-defined]
        return own is not CompressedEmbedding.codes_from_serving.__func__  # type: ignore[attr-defined]

    def knobs(self) -> dict[str, Any]:
        """The resolved knobs of this layer (recorded with each run): by default the attribute of
        each ``knob_type`` field, so a layer stores its resolved knobs under their own names."""
        return {f.name: getattr(self, f.name) for f in fields(self.knob_type)}

    @classmethod
    def check_knobs(cls, embedding_dim: int, **knobs: Any) -> Knobs:
        """Validate knobs before any data is loaded and return them typed (``Knobs.coerced``),
        defaults filled in; raise ``ConfigError`` naming the knob and the fix.

        Called by ``checks.check_method`` with the method's YAML knobs (``recbench.record.NON_KNOB_KEYS``
        excluded) and by the base ``__init__``: unknown keys, wrong types and the method's own
        ``knob_type.validate`` rules fail the same way in both places.
        """
        parsed = cls.knob_type.parse(knobs, cls.__name__)
        try:
            parsed.validate(embedding_dim)
        except (TypeError, ValueError):  # a comparison on a wrongly typed value: say the type
            parsed.check_types()
            raise
        parsed.check_types()
        return parsed.coerced()

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
        updated knobs; raises ``BudgetError`` (``recbench.errors``) with the smallest achievable
        budget (its ``floor``) when none fits. Methods without a size knob (full) accept only
        ``budget >= 1``.
        """
        if budget >= 1.0:
            return dict(knobs)
        raise BudgetError.unreachable(
            cls.__name__, budget, num_ids, 1.0, "its size is fixed", "or use a compressing method"
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

    def no_weight_decay(self) -> list[nn.Parameter]:
        """Parameters the optimizer must not decay (``train.weight_decay`` skips them). Decay on a
        row is a pull of that embedding towards zero; on a factor of a factorised table it is a
        different regulariser, which can outweigh gradients that are products of other small
        factors (TT-Rec's cores collapse under it). Default: none."""
        return []

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The method's own tables read only through ``_lookup`` (row gathers), which may train
        with sparse gradients; ``nn.Embedding`` children are handled by
        ``enable_sparse_gradients``. Default: none."""
        return []

    def enable_sparse_gradients(self, enabled: bool = True) -> list[nn.Parameter]:
        """Switch this layer's row-gathered tables to sparse gradients (``train.sparse``) or back;
        return the trainable tables that now get sparse gradients (for SparseAdam).

        Covers ``sparse_parameters()`` (through ``_lookup``) and every ``nn.Embedding`` inside the
        layer; projections, centroids and MLPs stay dense. The training loop asks each layer
        rather than knowing which methods hold which tables.
        """
        own = self.sparse_parameters()
        self.sparse_grad = bool(enabled and own)
        tables = list(own)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = bool(enabled)
                tables.append(module.weight)
        return [t for t in tables if t.requires_grad] if enabled else []

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


def check_budget(raw: Any, where: str = "method") -> float | None:
    """The method node's ``budget`` as a float, or None when unset; raises ``ConfigError`` unless
    it is a fraction in (0, 1] of the full float32 size.

    The budget is not a knob: it belongs to the method config (``recbench.record.NON_KNOB_KEYS``), is checked
    here before any data loads, and is turned into knobs per layer by ``solve_budget``.
    """
    if raw is None:
        return None
    try:
        budget = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}.budget={raw} is not a number; give a fraction of the full size in (0, 1], "
            f"e.g. {where}.budget=0.25"
        ) from None
    if not 0 < budget <= 1:
        raise ConfigError(
            f"{where}.budget={raw} is outside (0, 1]: the budget is a fraction of the full float32 "
            f"size (1 = no compression); e.g. {where}.budget=0.25"
        )
    return budget


def tight_floor(estimate: float, fits: Callable[[float], bool]) -> float:
    """The smallest budget a solver accepts, from its estimate ``smallest size / full``: that
    quotient, rounded to a float, may sit an ulp below what a solver comparing
    ``size <= budget * full`` accepts, so step up by ulps until ``fits`` (the solver's own test)
    says yes. A ``BudgetError``'s ``floor`` is then a budget that is reached."""
    floor = float(estimate)
    for _ in range(64):
        if fits(floor):
            return floor
        floor = math.nextafter(floor, math.inf)
    return floor


class BudgetedFactory:
    """Wraps a method's factory so that each layer's size knob is solved for ``budget`` (a fraction
    of that layer's full float32 size) once the layer's shape and counts are known.

    Why per layer: the user and item tables of a backbone differ in size, and an equal-memory
    comparison must hold for each table, not just on average. The solved knobs are what the layer's
    ``knobs()`` then reports, so every run records what the solver chose.

    With ``unreached`` (a list), a table whose budget cannot be reached does not stop the build:
    its ``BudgetError`` is appended there and the layer is built at its floor instead, so that
    the backbone asks for its other tables too and the run can name the largest floor of all of
    them (``recbench.assembly.build_model``); without it the error is raised at once.
    """

    def __init__(
        self,
        factory: Callable[..., CompressedEmbedding],
        budget: float,
        unreached: list[BudgetError] | None = None,
    ) -> None:
        self.factory = factory
        self.budget = check_budget(budget)
        self.unreached = unreached

    def __call__(
        self, num_embeddings: int, embedding_dim: int, *, counts: Tensor | None = None
    ) -> CompressedEmbedding:
        cls = getattr(self.factory, "func", self.factory)
        knobs = dict(getattr(self.factory, "keywords", {}) or {})
        n = num_embeddings - 1
        try:
            solved = cls.solve_budget(self.budget, n, embedding_dim, counts, **knobs)
        except BudgetError as exc:
            if self.unreached is None:
                raise
            self.unreached.append(exc)
            solved = cls.solve_budget(exc.floor, n, embedding_dim, counts, **knobs)  # stand-in
        return cls(num_embeddings, embedding_dim, counts=counts, **solved)
