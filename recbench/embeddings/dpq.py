"""Differentiable product quantization (DPQ, Chen et al. 2020), the vector-quantization variant used by
the MGQE paper (Kang et al. 2020, section 3.3).

Training keeps a float *query* table ``n x d`` (training only, never served). A query is split into
``D`` subspaces of ``d/D`` dims; in each subspace the code is the nearest (L2) of ``K`` learnable
centroids, and the embedding is the concatenation of the chosen centroids. The argmin is bridged with
the straight-through estimator, ``out = q + sg(c - q)``: the task gradient reaches the query table,
and the centroids learn from the auxiliary VQ loss

    aux_weight * mean over (looked-up rows, dims) of  (c - sg(q))^2 + beta * (sg(c) - q)^2

(codebook term + ``beta`` x commitment term). The mean over every coordinate follows the authors'
reference implementation (``reduce_mean`` in ``kd_quantizer.py``, codebook weight 1), so the scale of the
term does not depend on ``d`` or ``D``; ``beta`` defaults to VQ-VAE's 0.25 (the authors' code leaves the
commitment term off with 0). It is added in training mode only; padding rows are excluded. (The authors' code also batch-normalises the distances before its argmin; the MGQE paper
describes the plain nearest centroid, which is what this layer computes.)

Serving stores the codes (``n * D`` codes of ``ceil(log2 K)`` bits, bit-packed) and the centroids
(``32 * K * d`` bits); the query table is dropped. In eval mode ``forward``/``full_table`` return that
served table: codes of every id computed from the current query table, cached until a parameter
changes (keyed on the tensors' in-place version counters, bumped by optimizer steps and
``load_state_dict``), so evaluation sees exactly what is served and ``forward`` agrees with
``full_table`` bit for bit.

Initialisation: queries and centroids are both drawn from N(0, init_std^2) (the MGQE paper initialises
every embedding with std 0.01). Drawing centroids from the same distribution as the queries puts them
inside the cloud of query sub-vectors from the start, so nearly all of them are chosen by some id
(seeding them from random query rows would give the same distribution).

The search, the straight-through lookup, the caches and the query table are shared with MGQE
(``recbench.embeddings.mgqe``, DPQ with frequency tiers) in ``recbench.embeddings.vq``; this file
holds what is DPQ's own: one centroid table for every id, its knobs, serving form and budget solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recbench.embeddings.base import tight_floor
from recbench.embeddings.packing import pack_bits, unpack_bits
from recbench.embeddings.vq import (
    VQEmbedding,
    VQKnobs,
    centroid_ladder,
    check_num_centroids,
    check_num_subspaces,
    code_bits,
    divisors_descending,
    fits_best,
    gather_centroids,
    nearest_centroids,
    quantize,
)
from recbench.errors import BudgetError


@dataclass(frozen=True)
class DPQKnobs(VQKnobs):
    """DPQ's knobs: ``D`` subspaces of ``d/D`` dims with ``K`` centroids each (paper: 64, 256),
    plus the shared ``beta``, ``aux_weight`` and ``init_std``."""

    num_subspaces: int = 64  # D, must divide the embedding dimension
    num_centroids: int = 256  # K centroids per subspace, 2..65536

    def validate(self, embedding_dim: int) -> None:
        check_num_subspaces(self.num_subspaces, embedding_dim)
        check_num_centroids(self.num_centroids)
        super().validate(embedding_dim)


class DPQEmbedding(VQEmbedding):
    """DPQ-VQ: ``D`` subspaces with ``K`` centroids each; serves ``n*D*ceil(log2 K) + 32*K*d`` bits."""

    knob_type = DPQKnobs
    num_subspaces: int
    num_centroids: int

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.subspace_dim = self.embedding_dim // self.num_subspaces
        self.centroids = self._centroids_init(
            self.num_subspaces, self.num_centroids, self.subspace_dim
        )

    # ------------------------------------------------------------ VQ layout
    def _centroid_tensors(self) -> list[Tensor]:
        return [self.centroids]

    def _search_all(self, values: bool) -> tuple[Tensor, Tensor | None]:
        """``(n, D)`` codes of the real ids and, with ``values``, their ``(n, d)`` rows."""
        queries = self.query.weight[1:].detach().view(-1, self.num_subspaces, self.subspace_dim)
        codes, chosen = nearest_centroids(
            queries, self.centroids, values=values, fused=self.fused_search
        )
        rows = None if chosen is None else chosen.reshape(-1, self.embedding_dim)
        return codes.to(torch.int64), rows

    def _train_lookup(
        self, unique: Tensor, counts: Tensor, known: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        queries = self._query_rows(unique).view(-1, self.num_subspaces, self.subspace_dim)
        if known is None:
            codes, chosen = nearest_centroids(queries, self.centroids, fused=self.fused_search)
        else:  # codes of ids 1..n; the padding id's row is zeroed anyway
            codes, chosen = known[(unique - 1).clamp_(min=0)], None
        padding = unique[:1] == 0
        weights = counts * (unique != 0)  # padding rows carry no loss
        out, aux = quantize(queries, self.centroids, codes, self.beta, weights, chosen, padding)
        return out.reshape(-1, self.embedding_dim), aux

    def serving_bits(self) -> int:
        return (
            self.num_ids * self.num_subspaces * code_bits(self.num_centroids)
            + 32 * self.num_centroids * self.embedding_dim
        )

    def serving_tensors(self) -> dict[str, Tensor]:
        codes, _ = self._served()
        return {
            "codes": pack_bits(codes, code_bits(self.num_centroids)).cpu(),
            "centroids": self.centroids.detach().to(torch.float32).cpu().contiguous(),
        }

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        n, d = int(meta["num_embeddings"]) - 1, int(meta["embedding_dim"])
        num_subspaces, num_centroids = int(meta["num_subspaces"]), int(meta["num_centroids"])
        codes = unpack_bits(tensors["codes"], code_bits(num_centroids), n * num_subspaces)
        centroids = tensors["centroids"].to(torch.float32)
        table = gather_centroids(centroids, codes.view(n, num_subspaces).to(centroids.device))
        return torch.cat([centroids.new_zeros(1, d), table.reshape(n, d)])

    @classmethod
    def codes_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        """Codes of ids 1..n as an ``(n, D)`` int64 matrix, for comparing items by codes."""
        n, num_subspaces = int(meta["num_embeddings"]) - 1, int(meta["num_subspaces"])
        codes = unpack_bits(
            tensors["codes"], code_bits(int(meta["num_centroids"])), n * num_subspaces
        )
        return codes.view(n, num_subspaces).to(torch.int64)

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
        """Choose ``num_subspaces`` D and ``num_centroids`` K, the paper's two size knobs: the
        largest layer that fits the budget over D in the divisors of ``d`` and K in
        ``centroid_ladder`` (the configured K, then the powers of two below it, down to 2). On
        equal sizes the configured K wins, then the larger K.

        Why K too: the ``32 K d`` centroid bits do not shrink with D, so with K fixed a small table
        (943 users at d = 64) cannot go below about ``K / n`` of full (27 % at K = 256)."""
        parsed = cls.check_knobs(embedding_dim, **knobs)
        n, d = int(num_ids), int(embedding_dim)
        full = 32 * n * d

        def bits(subspaces: int, centroids: int) -> int:
            return n * subspaces * code_bits(centroids) + 32 * centroids * d

        ladder = centroid_ladder(parsed.num_centroids)
        grid = ((bits(D, K), (D, K)) for K in ladder for D in divisors_descending(d))
        best = fits_best(grid, budget * full)
        if best is not None:
            subspaces, centroids = best[1]
            return {**knobs, "num_subspaces": subspaces, "num_centroids": centroids}
        size = bits(1, ladder[-1])
        smallest = tight_floor(size / full, lambda b: size <= b * full)
        raise BudgetError.unreachable(
            cls.__name__, budget, n, smallest, f"num_subspaces=1, num_centroids={ladder[-1]}"
        )
