"""Multi-granular quantized embeddings (MGQE, Kang et al. 2020, section 4): DPQ with frequency tiers.

Ids are sorted by descending training frequency (1 = most popular), so the paper's frequency
partition ``V_1 .. V_m`` is a list of contiguous id ranges: ``tier_fractions`` (default top 10 % /
rest) or explicit ``tier_sizes``. Head ids get more code capacity than tail ids. Three variants
(paper section 4.2, Table 6):

* ``shared_k`` (the paper's default, "share, variable K"): one DPQ centroid table with
  ``K = max K_i``; ids of tier ``i`` may use only its first ``K_i`` centroids, so their codes take
  ``ceil(log2 K_i)`` bits. Serving bits ``sum_i |V_i| D ceil(log2 K_i) + 32 K d``.
* ``unshared_k`` ("unshare, variable K"): a private centroid table of ``K_i`` per tier, same ``D``.
  Serving bits ``sum_i (|V_i| D ceil(log2 K_i) + 32 K_i d)``.
* ``unshared_d`` ("unshare, variable D"): a private table per tier with its own ``D_i`` (and
  ``K_i``). Serving bits ``sum_i (|V_i| D_i ceil(log2 K_i) + 32 K_i d)``.

Lookups are batched per tier (paper section 4.3, Algorithm 1): a batch is reduced to its sorted
distinct ids, which split into one slice per tier, and each tier does one nearest-centroid search
and one gather for all its ids; never a per-item loop. Training, the straight-through estimator, the
auxiliary VQ loss (averaged over every looked-up coordinate of every tier), the eval-mode served
table (cached until a parameter changes) and the initialisation are DPQ's
(``recbench.embeddings.dpq``; see its docstring for why), shared through
``recbench.embeddings.vq``; this file holds what is MGQE's own: tiers, variants, serving form and
budget solver.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import tight_floor
from recbench.embeddings.packing import pack_bits, unpack_bits
from recbench.embeddings.vq import (
    VQEmbedding,
    VQKnobs,
    as_list,
    check_num_centroids,
    check_num_subspaces,
    code_bits,
    divisors_descending,
    fits_best,
    gather_centroids,
    nearest_centroids,
    quantize,
)
from recbench.errors import BudgetError, ConfigError

VARIANTS = ("shared_k", "unshared_k", "unshared_d")
DEFAULT_FRACTIONS = (0.1, 0.9)
DEFAULT_CENTROIDS = (256, 64)


# ----------------------------------------------------------------------------- pure helpers
def resolve_tiers(num_ids: int, tier_fractions: Any = None, tier_sizes: Any = None) -> list[int]:
    """Sizes ``|V_i|`` of the tiers over ``num_ids`` real ids (head first).

    Explicit ``tier_sizes`` win and must sum to ``num_ids``. Otherwise tier ``i`` ends at id
    ``floor(cum_fraction_i * n + 0.5)`` (rounded half up, the last tier ends at ``n``); a tier may be
    empty on a tiny vocabulary.
    """
    if tier_sizes is not None:
        sizes = [int(s) for s in tier_sizes]
        if sum(sizes) != num_ids:
            raise ConfigError(
                f"method.tier_sizes={sizes} sums to {sum(sizes)} but the layer has {num_ids} real "
                "ids; use method.tier_fractions (applies to every layer) or sizes that sum to it"
            )
        return sizes
    fractions = [
        float(f) for f in (DEFAULT_FRACTIONS if tier_fractions is None else tier_fractions)
    ]
    ends, cumulative = [], 0.0
    for fraction in fractions[:-1]:
        cumulative += fraction
        ends.append(min(num_ids, math.floor(cumulative * num_ids + 0.5)))
    ends.append(num_ids)
    starts = [0, *ends[:-1]]
    return [end - start for start, end in zip(starts, ends)]


def tier_lists(
    num_tiers: int, num_centroids: Any, num_subspaces: Any
) -> tuple[list[int], list[int]]:
    """Per-tier ``K_i`` and ``D_i`` from scalars or lists (a scalar applies to every tier)."""
    ks = as_list(num_centroids)
    ks = [num_centroids] * num_tiers if ks is None else ks
    ds = as_list(num_subspaces)
    ds = [num_subspaces] * num_tiers if ds is None else ds
    for name, values in (("num_centroids", ks), ("num_subspaces", ds)):
        if len(values) != num_tiers:
            raise ConfigError(
                f"method.{name}={list(values)} has {len(values)} entries but there are {num_tiers} "
                "tiers; give one value per tier (or a single number)"
            )
    return list(ks), list(ds)


def mgqe_serving_bits(
    variant: str, sizes: Sequence[int], ks: Sequence[int], ds: Sequence[int], embedding_dim: int
) -> int:
    """Serving bits of one MGQE layer (module docstring), an exact integer."""
    codes = sum(size * dd * code_bits(k) for size, k, dd in zip(sizes, ks, ds))
    if variant == "shared_k":
        return codes + 32 * max(ks) * embedding_dim
    return codes + sum(32 * k * embedding_dim for k in ks)


@dataclass(frozen=True)
class MGQEKnobs(VQKnobs):
    """MGQE's knobs: the variant, the frequency tiers, and ``K_i`` / ``D_i`` per tier (a single
    number applies to every tier), plus the shared ``beta``, ``aux_weight`` and ``init_std``."""

    variant: str = "shared_k"  # one of VARIANTS
    tier_fractions: list[float] | None = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    tier_sizes: list[int] | None = None  # explicit ids per tier; overrides tier_fractions
    num_centroids: int | list[int] = field(default_factory=lambda: list(DEFAULT_CENTROIDS))
    num_subspaces: int | list[int] = 64

    def validate(self, embedding_dim: int) -> None:
        self.check_types()  # first: a wrong scalar would otherwise be named as tier 0's value
        variant = self.variant
        if variant not in VARIANTS:
            raise ConfigError(
                f"method.variant={variant} is unknown; use shared_k (the paper's default), "
                "unshared_k or unshared_d"
            )
        ks, ds = tier_lists(self.num_tiers(), self.num_centroids, self.num_subspaces)
        for i, k in enumerate(ks):
            check_num_centroids(k, f"method.num_centroids[{i}]")
        for i, dd in enumerate(ds):
            check_num_subspaces(dd, embedding_dim, f"method.num_subspaces[{i}]")
        if variant != "unshared_d" and len(set(ds)) > 1:
            raise ConfigError(
                f"method.num_subspaces={list(ds)} varies by tier, which needs separate centroid "
                f"tables; use method.variant=unshared_d or a single number with variant={variant}"
            )
        super().validate(embedding_dim)

    def num_tiers(self) -> int:
        """The number of tiers (``tier_sizes`` wins over ``tier_fractions``), after checking the
        list that defines them."""
        sizes = self.tier_sizes
        if sizes is not None:
            values = as_list(sizes)
            if not values or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values
            ):
                raise ConfigError(
                    f"method.tier_sizes={sizes} must be a list of non-negative ints (head first); "
                    "use e.g. [600, 5440] or set it to null and use method.tier_fractions"
                )
            return len(values)
        fractions = self.tier_fractions
        values = as_list(fractions) if fractions is not None else list(DEFAULT_FRACTIONS)
        if (
            not values
            or any(isinstance(f, bool) or not isinstance(f, int | float) or f <= 0 for f in values)
            or abs(sum(values) - 1.0) > 1e-6
        ):
            raise ConfigError(
                f"method.tier_fractions={fractions} must be positive fractions of the ids that "
                "sum to 1 (head first); use e.g. [0.1, 0.9]"
            )
        return len(values)


class MGQEmbedding(VQEmbedding):
    """MGQE: DPQ whose code capacity (``K_i`` or ``D_i``) depends on the id's frequency tier."""

    frequency_aware = True
    knob_type = MGQEKnobs
    variant: str
    tier_fractions: list[float] | None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        """The base sets the knobs as given; the tiers, ``num_centroids`` and ``num_subspaces``
        are then resolved to one entry per tier (what ``knobs()`` records)."""
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        given = self.given_knobs
        self.tier_sizes = resolve_tiers(self.num_ids, given.tier_fractions, given.tier_sizes)
        self.num_tiers = len(self.tier_sizes)
        ks, ds = tier_lists(self.num_tiers, given.num_centroids, given.num_subspaces)
        self.num_centroids = [int(k) for k in ks]
        self.num_subspaces = [int(dd) for dd in ds]
        # Tier i holds ids [starts[i], ends[i]) (id 0 is padding, so tier 0 starts at 1).
        bounds = [1]
        for size in self.tier_sizes:
            bounds.append(bounds[-1] + size)
        self.tier_starts, self.tier_ends = bounds[:-1], bounds[1:]
        # Tier boundaries [start_0, end_0 = start_1, ..., end_last] as a device-following tensor, to
        # slice the sorted distinct ids of a batch by tier (not saved).
        self.register_buffer("tier_bounds_tensor", torch.tensor(bounds), persistent=False)
        if counts is not None and bool((self.counts[2:] > self.counts[1:-1]).any()):
            warnings.warn(
                "MGQEmbedding: counts are not in descending order over ids 1..n, so the tiers "
                "(contiguous id ranges) do not follow frequency; ids should be sorted by popularity",
                stacklevel=2,
            )
        d = self.embedding_dim
        if self.variant == "shared_k":
            dd = self.num_subspaces[0]
            shapes = [(dd, max(self.num_centroids), d // dd)]
        else:
            shapes = [(dd, k, d // dd) for k, dd in zip(self.num_centroids, self.num_subspaces)]
        self.centroids = nn.ParameterList([self._centroids_init(*shape) for shape in shapes])

    def knobs(self) -> dict[str, Any]:
        """Resolved knobs; ``tier_sizes``, ``num_centroids`` and ``num_subspaces`` per tier."""
        return {
            "variant": self.variant,
            "tier_fractions": self.tier_fractions,
            "tier_sizes": list(self.tier_sizes),
            "num_centroids": list(self.num_centroids),
            "num_subspaces": list(self.num_subspaces),
            "beta": self.beta,
            "aux_weight": self.aux_weight,
            "init_std": self.init_std,
        }

    # ------------------------------------------------------------------ tiers
    def tier_centroids(self, tier: int) -> Tensor:
        """The ``(D_i, K_i, d/D_i)`` centroids tier ``tier`` may use (a view for ``shared_k``)."""
        if self.variant == "shared_k":
            return self.centroids[0][:, : self.num_centroids[tier]]
        return self.centroids[tier]

    # ------------------------------------------------------------ VQ layout
    def _centroid_tensors(self) -> list[Tensor]:
        return list(self.centroids)

    def _search_all(self, values: bool) -> tuple[list[Tensor], Tensor | None]:
        """Per tier the ``(|V_i|, D_i)`` codes of its ids and, with ``values``, the ``(n, d)`` rows
        of every real id. Tiers are contiguous id ranges, so no masks are needed."""
        codes, rows = [], []
        for tier, (start, end) in enumerate(zip(self.tier_starts, self.tier_ends)):
            centroids = self.tier_centroids(tier)
            queries = self.query.weight[start:end].detach()
            grouped = queries.view(-1, centroids.shape[0], centroids.shape[2])
            tier_codes, chosen = nearest_centroids(
                grouped, centroids, values=values, fused=self.fused_search
            )
            codes.append(tier_codes.to(torch.int64))
            if values:
                rows.append(chosen.reshape(-1, self.embedding_dim))
        return codes, (torch.cat(rows) if values else None)

    def _train_lookup(
        self, unique: Tensor, counts: Tensor, known: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per tier (a slice of the sorted distinct ids): one search, or the ``known`` codes of
        all its ids, and one ``quantize``."""
        if unique.numel() and (int(unique[0]) < 0 or int(unique[-1]) > self.num_ids):
            raise IndexError(
                f"ids out of range for MGQEmbedding with {self.num_embeddings} ids (0..{self.num_ids})"
            )
        bounds = torch.searchsorted(unique, self.tier_bounds_tensor).tolist()
        if self.variant == "shared_k":
            return self._shared_lookup(unique, counts, known, bounds)
        parts = [self.query.weight.new_zeros(bounds[0], self.embedding_dim)]  # the padding id
        aux = self.query.weight.new_zeros(())
        for tier in range(self.num_tiers):
            if bounds[tier + 1] == bounds[tier]:
                continue
            piece = slice(bounds[tier], bounds[tier + 1])
            centroids = self.tier_centroids(tier)
            queries = self._query_rows(unique[piece]).view(
                -1, centroids.shape[0], centroids.shape[2]
            )
            if known is None:
                codes, chosen = nearest_centroids(queries, centroids, fused=self.fused_search)
            else:
                codes, chosen = known[tier][unique[piece] - self.tier_starts[tier]], None
            out, tier_aux = quantize(queries, centroids, codes, self.beta, counts[piece], chosen)
            parts.append(out.reshape(-1, self.embedding_dim))
            aux = aux + tier_aux
        return torch.cat(parts), aux

    def _shared_lookup(
        self, unique: Tensor, counts: Tensor, known: list[Tensor] | None, bounds: list[int]
    ) -> tuple[Tensor, Tensor]:
        """``shared_k``: every tier indexes the one centroid table, so after one search per tier
        a single query lookup and a single ``quantize`` serve all tiers (its ``segments`` keep the
        per-tier sums of the loop above, bit for bit)."""
        centroids = self.centroids[0]
        real = unique[bounds[0] :]
        queries = self._query_rows(real).view(-1, centroids.shape[0], centroids.shape[2])
        codes, chosen, segments = [], [], [0]
        for tier in range(self.num_tiers):
            if bounds[tier + 1] == bounds[tier]:
                continue
            piece = slice(bounds[tier] - bounds[0], bounds[tier + 1] - bounds[0])
            if known is None:
                tier_codes, tier_chosen = nearest_centroids(
                    queries[piece], self.tier_centroids(tier), fused=self.fused_search
                )
                chosen.append(tier_chosen)
            else:
                tier_codes = known[tier][real[piece] - self.tier_starts[tier]]
            codes.append(tier_codes)
            segments.append(piece.stop)
        if len(codes) != 1:
            codes = [torch.cat(codes)] if codes else [real.new_zeros(0, centroids.shape[0])]
            chosen = [torch.cat(chosen)] if chosen else []
        out, aux = quantize(
            queries, centroids, codes[0], self.beta, counts[bounds[0] :],
            chosen[0] if chosen else None, segments=segments,
        )  # fmt: skip
        out = out.reshape(-1, self.embedding_dim)
        if bounds[0]:  # the padding id
            out = torch.cat([out.new_zeros(bounds[0], self.embedding_dim), out])
        return out, aux

    def serving_bits(self) -> int:
        return mgqe_serving_bits(
            self.variant,
            self.tier_sizes,
            self.num_centroids,
            self.num_subspaces,
            self.embedding_dim,
        )

    def serving_tensors(self) -> dict[str, Tensor]:
        codes, _ = self._served()
        tensors = {
            f"codes_{tier}": pack_bits(tier_codes, code_bits(self.num_centroids[tier])).cpu()
            for tier, tier_codes in enumerate(codes)
        }
        for i, centroids in enumerate(self.centroids):
            name = "centroids" if self.variant == "shared_k" else f"centroids_{i}"
            tensors[name] = centroids.detach().to(torch.float32).cpu().contiguous()
        return tensors

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        d = int(meta["embedding_dim"])
        variant = str(meta["variant"])
        rows = []
        for tier, (size, k, dd) in enumerate(
            zip(meta["tier_sizes"], meta["num_centroids"], meta["num_subspaces"])
        ):
            size, k, dd = int(size), int(k), int(dd)
            if variant == "shared_k":
                centroids = tensors["centroids"].to(torch.float32)[:, :k]
            else:
                centroids = tensors[f"centroids_{tier}"].to(torch.float32)
            codes = unpack_bits(tensors[f"codes_{tier}"], code_bits(k), size * dd).view(size, dd)
            rows.append(gather_centroids(centroids, codes.to(centroids.device)).reshape(size, d))
        first = tensors["centroids" if variant == "shared_k" else "centroids_0"]
        return torch.cat([first.new_zeros(1, d, dtype=torch.float32), *rows])

    @classmethod
    def codes_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        """Codes of ids 1..n as one ``(n, max D_i)`` int64 matrix, for comparing items by codes.

        ``shared_k``: the stored codes (one centroid table, so equal codes mean equal centroids).
        Private tables (``unshared_*``): codes are offset by the centroids of earlier tiers, so two
        ids of different tiers never share a code; a narrower tier's missing positions hold
        distinct negative values that match nothing."""
        variant = str(meta["variant"])
        width = max(int(dd) for dd in meta["num_subspaces"])
        parts, offset, row = [], 0, 0
        for tier, (size, k, dd) in enumerate(
            zip(meta["tier_sizes"], meta["num_centroids"], meta["num_subspaces"])
        ):
            size, k, dd = int(size), int(k), int(dd)
            codes = unpack_bits(tensors[f"codes_{tier}"], code_bits(k), size * dd).view(size, dd)
            codes = codes.to(torch.int64) + (0 if variant == "shared_k" else offset)
            if dd < width:
                filler = -1 - torch.arange(row * width, (row + size) * width, dtype=torch.int64)
                codes = torch.cat([codes, filler.view(size, width)[:, dd:]], dim=1)
            parts.append(codes)
            offset, row = offset + k, row + size
        return torch.cat(parts) if parts else torch.empty(0, width, dtype=torch.int64)

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
        """Choose ``num_subspaces`` and ``num_centroids`` (the paper's two size knobs); tiers stay
        as configured. The largest layer that fits the budget over:

        * ``K_i``: the configured list scaled down together by powers of two, ratios kept, each
          ``K_i`` at least 2 (``[256, 64] -> [128, 32] -> ... -> [8, 2] -> [4, 2] -> [2, 2]``);
        * ``D``: ``shared_k``/``unshared_k``: every divisor of ``d``. ``unshared_d``: the head tier
          any divisor ``D_1``, every other tier its configured ratio to the largest configured
          ``D``, rounded down to a divisor of ``d`` (at least 1), e.g. ``[64, 32]`` -> ``[32, 16]``.

        On equal sizes the configured ``K_i`` win, then the larger ones. Why ``K`` too: the
        ``32 K d`` centroid bits do not shrink with ``D``, so with ``K`` fixed a small table cannot
        go below about ``K / n`` of full.
        """
        parsed = cls.check_knobs(embedding_dim, **knobs)
        variant = parsed.variant
        n, d = int(num_ids), int(embedding_dim)
        sizes = resolve_tiers(n, parsed.tier_fractions, parsed.tier_sizes)
        ks, ds = tier_lists(len(sizes), parsed.num_centroids, parsed.num_subspaces)
        divisors = divisors_descending(d)
        top = max(ds)

        def scaled(head: int) -> list[int]:
            if variant != "unshared_d":
                return [head] * len(ds)
            return [next((q for q in divisors if q <= max(1.0, head * dd / top)), 1) for dd in ds]

        ladder = [list(ks)]
        while any(k > 2 for k in ladder[-1]):
            ladder.append([max(2, int(k) >> len(ladder)) for k in ks])
        grid = (
            (mgqe_serving_bits(variant, sizes, tier_ks, scaled(head), d), (tier_ks, head))
            for tier_ks in ladder
            for head in divisors
        )
        full = 32 * n * d
        best = fits_best(grid, budget * full)
        if best is not None:
            tier_ks, head = best[1]
            value: int | list[int] = scaled(head) if variant == "unshared_d" else head
            solved = {**knobs, "num_subspaces": value}
            if tier_ks != ladder[0]:
                solved["num_centroids"] = tier_ks
            return solved
        size = mgqe_serving_bits(variant, sizes, ladder[-1], scaled(1), d)
        smallest = tight_floor(size / full, lambda b: size <= b * full)
        raise BudgetError.unreachable(
            cls.__name__, budget, n, smallest, f"num_subspaces=1, num_centroids={ladder[-1]}"
        )
