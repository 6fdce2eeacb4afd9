"""CCE, Clustered Compositional Embeddings (Tsang and Ahle, "Clustering the Sketch: Dynamic
Compression for Embedding Tables", NeurIPS 2023).

The embedding of an id is the concatenation of ``c`` columns of ``d/c`` dims (compositional
embeddings, concat variant). Column ``i`` owns two tables of ``k`` rows, ``A_i`` and ``B_i``, and two
pointers per id, ``p_i(id)`` and ``q_i(id)``:

    e(id) = concat_i ( A_i[p_i(id)] + B_i[q_i(id)] ).

At first both pointers are hash functions (hashed compositional embeddings). Every ``cluster_every``
epochs, ``num_clusterings`` times in all, each column is re-organised by clustering its current
sub-embeddings (the "sketch"): k-means with ``k`` centroids over the ``n`` vectors
``A_i[p_i(id)] + B_i[q_i(id)]`` gives ``A_i`` := the centroids and ``p_i`` := the learned assignment;
``B_i`` is reset to zero and ``q_i`` becomes a fresh hash function, so the next round of training can
again separate ids that the clustering merged. The clustering step itself changes each embedding only
by its distance to its centroid. This is the algorithm as described in the paper (Algorithm 1); its
reference code was not consulted.

Implementation choices (the paper leaves them open or uses faiss): Lloyd's k-means with
``kmeans_iters`` iterations started from ``k`` distinct random points (seeded from ``hash_seed``, the
column and the round; faiss' default initialisation), an empty cluster keeps its previous centroid;
with ``n <= k`` every id gets its own row. Clustering runs in ``on_epoch_end``, which returns both
tables so the training loop drops their Adam moments (the rows now mean something else). All ``c``
columns are clustered at each clustering event.

Serving: the ``2*c`` tables (``2*k*d`` float32 values in all) and, for every column that has been
clustered, the learned assignment (``n`` pointers of ``ceil(log2 k)`` bits, bit-packed); hashed
pointers are recomputed from ``hash_family``/``hash_seed`` and the column's clustering count. Serving
bits ``64*k*d + c_clustered*n*ceil(log2 k)``, where ``c_clustered`` is 0 before the first clustering
and ``c`` after it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs, tight_floor
from recbench.embeddings.hashing import bucket_mapping, check_hash_knobs, murmur3_x86_32
from recbench.embeddings.pep import pack_wide, unpack_wide
from recbench.embeddings.vq import code_bits
from recbench.errors import BudgetError, ConfigError

log = logging.getLogger(__name__)

#: Largest temporary of the k-means distance computation, in elements (points are chunked).
_MAX_DISTANCE_ELEMENTS = 1 << 24


def derived_seed(hash_seed: int, kind: int, column: int, round_: int, num_columns: int) -> int:
    """A 32-bit seed for hash function ``kind`` (0 = the initial ``p_i``, 1 = ``q_i``, 2 = k-means
    initialisation) of ``column`` after ``round_`` clusterings: MurmurHash3 of a running index under
    ``hash_seed``, so runs with neighbouring seeds do not share hash functions."""
    index = np.array([(round_ * num_columns + column) * 3 + kind], dtype=np.int64)
    return int(murmur3_x86_32(index, int(hash_seed))[0])


def kmeans(points: Tensor, k: int, iterations: int, seed: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of ``points (n, s)``: ``(centroids (k, s), assignment (n,))``.

    Starts from ``k`` distinct points drawn with ``seed``; an empty cluster keeps its centroid; stops
    early when no assignment changes. With ``n <= k`` each point is its own centroid (rows beyond
    ``n`` are zero)."""
    n, dim = points.shape
    points = points.detach().to(torch.float32)
    if n <= k:
        centroids = points.new_zeros(k, dim)
        centroids[:n] = points
        return centroids, torch.arange(n, device=points.device)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randperm(n, generator=generator)[:k].to(points.device)
    centroids = points[start].clone()
    assignment = torch.full((n,), -1, dtype=torch.int64, device=points.device)
    for _ in range(iterations):
        new = nearest(points, centroids)
        if torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        sizes = torch.bincount(assignment, minlength=k).to(points.dtype).unsqueeze(1)
        centroids = torch.where(sizes > 0, sums / sizes.clamp_min(1.0), centroids)
    return centroids, nearest(points, centroids)


def nearest(points: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared L2) of each point, in chunks of points."""
    squared = centroids.pow(2).sum(1)
    chunk = max(1, _MAX_DISTANCE_ELEMENTS // max(1, centroids.shape[0]))
    parts = [
        torch.addmm(squared, points[i : i + chunk], centroids.T, alpha=-2.0).argmin(1)
        for i in range(0, points.shape[0], chunk)
    ]
    return torch.cat(parts)


@dataclass(frozen=True)
class CCEKnobs(Knobs):
    num_columns: int = 4  # c, divides d
    num_rows: int | None = None  # k rows per table; when set it overrides compression_ratio
    compression_ratio: float | None = (
        0.125  # k = floor(compression_ratio * n) when num_rows is null
    )
    num_clusterings: int = 3  # k-means re-clusterings (0: the hashed tables only)
    cluster_every: int = 1  # epochs between clusterings
    kmeans_iters: int = 20
    hash_family: str = "murmur3"
    hash_seed: int = 0
    init_std: float = 0.01

    def validate(self, embedding_dim: int) -> None:
        columns = self.num_columns
        if (
            isinstance(columns, bool)
            or not isinstance(columns, int)
            or columns < 1
            or embedding_dim % columns
        ):
            divisors = [k for k in range(1, embedding_dim + 1) if embedding_dim % k == 0]
            raise ConfigError(
                f"method.num_columns={columns} must divide embedding_dim={embedding_dim}; use one of "
                f"{', '.join(map(str, divisors))}"
            )
        rows = self.num_rows
        if rows is not None and (
            isinstance(rows, bool) or not isinstance(rows, int) or not 2 <= rows <= 2**32
        ):
            raise ConfigError(f"method.num_rows={rows} must be an integer in 2..2^32 (or null)")
        ratio = self.compression_ratio
        if rows is None and (ratio is None or not isinstance(ratio, int | float) or ratio <= 0):
            raise ConfigError(
                f"method.compression_ratio={ratio} must be > 0 when method.num_rows is null "
                "(rows per table = ratio * ids, e.g. 0.125)"
            )
        for name, low in (("num_clusterings", 0), ("cluster_every", 1), ("kmeans_iters", 1)):
            value, default = getattr(self, name), getattr(type(self), name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"method.{name}={value} must be an integer >= {low}, e.g. {default}"
                )
        check_hash_knobs(self.hash_family, self.hash_seed)
        init_std = self.init_std
        if not isinstance(init_std, int | float) or init_std <= 0:
            raise ConfigError(f"method.init_std={init_std} must be > 0; use e.g. 0.01")


class CCEmbedding(CompressedEmbedding):
    """Clustered compositional embeddings: ``c`` concatenated columns, each the sum of a clustered
    (learned-pointer) row and a hashed row of two ``k x d/c`` tables.

    Serving bits ``64*k*d + c_clustered*n*ceil(log2 k)``.
    """

    knob_type = CCEKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.column_dim = self.embedding_dim // self.num_columns
        if self.num_rows is None:
            self.num_rows = max(2, math.floor(self.compression_ratio * self.num_ids + 1e-9))
        # Column i's k rows are rows i*k .. i*k+k-1 of each 2-D table (2-D so that train.sparse
        # gathers them with sparse gradients).
        shape = (self.num_columns * self.num_rows, self.column_dim)
        self.clustered_table = nn.Parameter(torch.randn(shape) * self.init_std)  # A_i
        self.hashed_table = nn.Parameter(torch.randn(shape) * self.init_std)  # B_i
        self.register_buffer("rounds", torch.zeros(self.num_columns, dtype=torch.int64))
        self.register_buffer(
            "pointers",
            self._hashed_pointers(0, [0] * self.num_columns),  # p_i
        )
        self.register_buffer(
            "hashed_pointers",
            self._hashed_pointers(1, [0] * self.num_columns),  # q_i
        )
        offsets = torch.arange(self.num_columns, dtype=torch.int64) * self.num_rows
        self.register_buffer("offsets", offsets, persistent=False)

    def _hashed_pointers(self, kind: int, rounds: list[int]) -> Tensor:
        return hashed_pointers(
            self.num_embeddings, self.num_columns, self.num_rows, self.hash_family, self.hash_seed,
            kind, rounds,
        )  # fmt: skip

    # ---------------------------------------------------------------- contract
    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        primary = self._lookup(self.pointers[flat] + self.offsets, self.clustered_table)
        residual = self._lookup(self.hashed_pointers[flat] + self.offsets, self.hashed_table)
        out = (primary + residual).reshape(*ids.shape, self.embedding_dim)
        return self._zero_padding(ids, out)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.clustered_table, self.hashed_table]

    def clustered_columns(self) -> int:
        """Columns whose pointer ``p_i`` is a learned assignment (stored), not a hash."""
        return int((self.rounds > 0).sum())

    def serving_bits(self) -> int:
        return (
            64 * self.num_rows * self.embedding_dim
            + self.clustered_columns() * self.num_ids * code_bits(self.num_rows)
        )

    def serving_meta(self) -> dict[str, Any]:
        return {**super().serving_meta(), "rounds": [int(r) for r in self.rounds.tolist()]}

    def serving_tensors(self) -> dict[str, Tensor]:
        out = {
            "clustered_table": self.clustered_table.detach().to(torch.float32).cpu().contiguous(),
            "hashed_table": self.hashed_table.detach().to(torch.float32).cpu().contiguous(),
        }
        learned = (self.rounds > 0).cpu()
        if bool(learned.any()):
            assignment = self.pointers[1:].cpu()[:, learned]  # (n, c_clustered), row-major
            for index, part in enumerate(pack_wide(assignment, code_bits(self.num_rows))):
                out[f"assignment_{index}"] = part
        return out

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        n_emb, d = int(meta["num_embeddings"]), int(meta["embedding_dim"])
        columns, rows = int(meta["num_columns"]), int(meta["num_rows"])
        rounds = [int(r) for r in meta["rounds"]]
        family, seed = str(meta["hash_family"]), int(meta["hash_seed"])
        pointers = hashed_pointers(n_emb, columns, rows, family, seed, 0, [0] * columns)
        learned = [i for i, r in enumerate(rounds) if r > 0]
        if learned:
            bits = code_bits(rows)
            parts = [tensors[f"assignment_{i}"] for i in range((bits + 15) // 16)]
            assignment = unpack_wide(parts, bits, (n_emb - 1) * len(learned))
            pointers[1:, learned] = assignment.view(n_emb - 1, len(learned))
        residual = hashed_pointers(n_emb, columns, rows, family, seed, 1, rounds)
        offsets = torch.arange(columns, dtype=torch.int64) * rows
        clustered = tensors["clustered_table"].to(torch.float32).cpu().reshape(-1, d // columns)
        hashed = tensors["hashed_table"].to(torch.float32).cpu().reshape(-1, d // columns)
        table = (clustered[pointers + offsets] + hashed[residual + offsets]).reshape(n_emb, d)
        table[0] = 0.0
        return table

    # --------------------------------------------------------------- training
    def on_epoch_end(self, epoch: int) -> list[nn.Parameter]:
        """Cluster every column at the end of epochs ``cluster_every``, ``2*cluster_every``, ...
        (``num_clusterings`` times); returns the two tables, whose optimizer state is stale."""
        done = int(self.rounds.max())
        if done >= self.num_clusterings or epoch % self.cluster_every:
            return []
        self.cluster()
        log.info("CCE: clustered %d columns (k=%d) after epoch %d (clustering %d of %d)",
                 self.num_columns, self.num_rows, epoch, done + 1, self.num_clusterings)  # fmt: skip
        return [self.clustered_table, self.hashed_table]

    @torch.no_grad()
    def cluster(self) -> None:
        """One CCE clustering step over every column (see the module docstring)."""
        ids = torch.arange(1, self.num_embeddings, device=self.pointers.device)
        current = self.forward(ids).detach().view(self.num_ids, self.num_columns, self.column_dim)
        for column in range(self.num_columns):
            round_ = int(self.rounds[column])
            seed = derived_seed(self.hash_seed, 2, column, round_, self.num_columns)
            centroids, assignment = kmeans(
                current[:, column], self.num_rows, self.kmeans_iters, seed
            )
            rows = slice(column * self.num_rows, (column + 1) * self.num_rows)
            self.clustered_table[rows] = centroids.to(self.clustered_table.dtype)
            self.pointers[1:, column] = assignment
            self.hashed_table[rows] = 0.0
            self.rounds[column] += 1
        self.hashed_pointers.copy_(self._hashed_pointers(1, self.rounds.tolist()))

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
        """Choose ``num_rows`` ``k``: the largest (at most ``n``) with
        ``64*k*d + c*n*ceil(log2 k) <= budget * 32*n*d``, counting the stored assignments of every
        column whenever ``num_clusterings >= 1`` (the size after the first clustering)."""
        given = cls.check_knobs(
            embedding_dim, **{**knobs, "num_rows": None, "compression_ratio": 1.0}
        )
        n, d = int(num_ids), int(embedding_dim)
        columns = int(given.num_columns) if int(given.num_clusterings) > 0 else 0
        limit = budget * 32 * n * d

        def bits(k: int) -> int:
            return 64 * k * d + columns * n * code_bits(k)

        best = None
        for width in range(1, 33):  # k in (2^(width-1), 2^width] has ceil(log2 k) = width
            low, high = (1 << (width - 1)) + 1, min(1 << width, max(n, 2))
            if low > high:
                break
            k = min(high, math.floor((limit - columns * n * width) / (64 * d)))
            if k >= low and bits(k) <= limit:
                best = k
        if best is None:
            smallest = tight_floor(bits(2) / (32 * n * d), lambda b: bits(2) <= b * 32 * n * d)
            raise BudgetError.unreachable(
                cls.__name__, budget, n, smallest, "num_rows=2", "or fewer method.num_columns"
            )
        return {**knobs, "num_rows": best, "compression_ratio": None}


def hashed_pointers(
    num_embeddings: int,
    columns: int,
    rows: int,
    family: str,
    seed: int,
    kind: int,
    rounds: list[int],
) -> Tensor:
    """``(num_embeddings, columns)`` hashed rows in ``0..rows-1`` of every id (row 0 = padding: 0)
    for hash function ``kind`` of each column after ``rounds[column]`` clusterings."""
    return torch.cat(
        [
            bucket_mapping(
                num_embeddings, family, [derived_seed(seed, kind, c, rounds[c], columns)], rows
            )
            for c in range(columns)
        ],
        dim=1,
    )
