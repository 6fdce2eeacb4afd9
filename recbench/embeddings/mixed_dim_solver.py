"""Pure solvers for mixed-dimension embeddings (Ginart et al. 2019): blocks, dimensions, budgets.

No torch modules here, only numbers in and numbers out, so the rules can be tested and reused on
their own (the dlrm ``tricks/md_embedding_bag.py`` pattern: a solver beside the module).

The alpha-power rule. Ginart et al. give block ``i`` the dimension ``d_i = lambda * p_i ** alpha``,
where ``p_i`` is the probability that one query hits one given id of block ``i`` (the block's share of
the training interactions divided by its number of ids) and ``alpha >= 0`` is a temperature:
``alpha = 0`` gives every block ``d`` (the full table), larger ``alpha`` shrinks unpopular blocks faster.
(The paper's reference code writes it as ``lambda * n_i ** -alpha`` with ``n_i`` the rows of a
uniformly-queried table, i.e. ``p_i = 1 / n_i``: popular blocks are wider.) ``lambda`` is fixed so the
most popular block 0 gets the full ``d``:

    d_i = round(d * (p_i / p_0) ** alpha), clipped to [min_dim, d].

Blocks (when not given) hold equal shares of the interaction mass: block ``j`` ends at the first id
where the cumulative count reaches ``(j + 1) / num_blocks`` of the total. With long-tailed counts this
gives a small head block and a long tail block, which is what the rule needs to save memory.

One practical guard: a block whose reduced table plus its ``d_i x d`` projection would store more
than its rows at full width (``n_i*d_i + d_i*d > n_i*d``: tiny blocks) keeps ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from recbench.errors import BudgetError, ConfigError


def as_real_counts(counts: Sequence[int] | np.ndarray, num_ids: int | None = None) -> np.ndarray:
    """Counts of the real ids as float64; a vector one longer than ``num_ids`` has padding dropped."""
    arr = np.asarray(counts, dtype=np.float64).reshape(-1)
    if num_ids is not None and arr.size == num_ids + 1:
        arr = arr[1:]
    if num_ids is not None and arr.size != num_ids:
        raise ConfigError(
            f"counts has {arr.size} entries for {num_ids} ids; pass one count per id "
            "(optionally with the padding id 0 first)"
        )
    return arr


def mixed_dim_bits(sizes: Sequence[int], dims: Sequence[int], embedding_dim: int) -> int:
    """Serving bits ``sum 32*n_i*d_i + sum_{d_i < d} 32*d_i*d`` (tables plus projections)."""
    tables = sum(int(n) * int(k) for n, k in zip(sizes, dims))
    projections = sum(int(k) * embedding_dim for k in dims if k < embedding_dim)
    return 32 * (tables + projections)


def resolve_block_sizes(block_sizes: Sequence[int | None], num_ids: int) -> list[int]:
    """Explicit block sizes with an optional trailing ``None`` meaning "every remaining id"."""
    sizes = list(block_sizes)
    if not sizes:
        raise ConfigError("method.block_sizes=[] names no block; give row counts or set it to null")
    if any(s is None for s in sizes[:-1]):
        raise ConfigError(
            f"method.block_sizes={sizes} may use null only as its last entry (the rest of the ids)"
        )
    fixed = [int(s) for s in sizes if s is not None]
    if any(s < 0 for s in fixed):
        raise ConfigError(f"method.block_sizes={sizes} must hold row counts >= 0")
    rest = num_ids - sum(fixed)
    if rest < 0 or (sizes[-1] is not None and rest != 0):
        raise ConfigError(
            f"method.block_sizes={sizes} covers {sum(fixed)} ids but the table has {num_ids}; "
            "make the sizes sum to the number of ids or end the list with null (the rest)"
        )
    return fixed + ([rest] if sizes[-1] is None else [])


def mass_blocks(counts: Sequence[int] | np.ndarray, num_blocks: int) -> list[int]:
    """Sizes of ``num_blocks`` contiguous blocks holding equal shares of the total count.

    ``counts`` are those of the real ids in id order (descending popularity). Every block gets at
    least one id (fewer blocks when there are fewer ids); all-zero counts give equal-size blocks.
    """
    c = as_real_counts(counts)
    n = c.size
    k = max(1, min(int(num_blocks), n))
    total = c.sum()
    if total <= 0:
        return [len(part) for part in np.array_split(np.arange(n), k)]
    cum = np.cumsum(c)
    ends: list[int] = []
    for j in range(1, k):
        end = int(np.searchsorted(cum, total * j / k, side="left")) + 1
        end = max(end, (ends[-1] if ends else 0) + 1)  # at least one id per block
        ends.append(min(end, n - (k - j)))  # leave one id for each later block
    bounds = [0, *ends, n]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def popularity_ratios(counts: Sequence[int] | np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """``p_i / p_0`` per block, with ``p_i`` the block's mean count per id (1 when ``p_0`` is 0)."""
    c = as_real_counts(counts)
    bounds = np.cumsum([0, *sizes])
    per_id = np.array(
        [c[a:b].sum() / max(b - a, 1) for a, b in zip(bounds[:-1], bounds[1:])], dtype=np.float64
    )
    if per_id.size == 0 or per_id[0] <= 0:
        return np.ones(len(sizes))
    return np.minimum(per_id / per_id[0], 1.0)


def dims_from_ratios(
    ratios: np.ndarray, sizes: Sequence[int], alpha: float, embedding_dim: int, min_dim: int = 1
) -> list[int]:
    """``round(d * ratio ** alpha)`` clipped to ``[min_dim, d]``, block 0 at ``d``, guard applied."""
    raw = embedding_dim * np.power(ratios, float(alpha))
    dims = np.clip(np.floor(raw + 0.5), min_dim, embedding_dim).astype(int).tolist()
    if dims:
        dims[0] = embedding_dim
    for i, (n_i, d_i) in enumerate(zip(sizes, dims)):
        if d_i < embedding_dim and n_i * d_i + d_i * embedding_dim > n_i * embedding_dim:
            dims[i] = embedding_dim
    return [int(x) for x in dims]


def alpha_power_dims(
    counts: Sequence[int] | np.ndarray,
    num_blocks: int,
    alpha: float,
    embedding_dim: int,
    min_dim: int = 1,
) -> tuple[list[int], list[int]]:
    """Block sizes (equal count mass) and their alpha-power dimensions (see the module docstring).

    ``counts`` are the training counts of the real ids 1..n in id order (no padding entry).
    """
    sizes = mass_blocks(counts, num_blocks)
    dims = dims_from_ratios(popularity_ratios(counts, sizes), sizes, alpha, embedding_dim, min_dim)
    return sizes, dims


def solve_alpha(
    budget: float,
    counts: Sequence[int] | np.ndarray,
    sizes: Sequence[int],
    embedding_dim: int,
    min_dim: int = 1,
    name: str = "MixedDimEmbedding",
) -> float:
    """The smallest ``alpha`` whose layer is the largest that fits ``budget`` (fraction of full);
    raises ``BudgetError`` (``name``: the layer's class) with the smallest size when none fits.

    Each block's dimension is a step function of ``alpha`` with steps where ``d * r_i ** alpha``
    crosses a half-integer, so the size takes finitely many values: we evaluate one ``alpha`` inside
    every interval between consecutive steps (never on a step, so rounding is unambiguous) and keep
    the best fit. The size is not monotone in ``alpha`` (a projection appears when a block first drops
    below ``d``), which is why every interval is checked rather than bisected.
    """
    ratios = popularity_ratios(counts, sizes)
    n = int(sum(sizes))
    full = 32 * n * embedding_dim
    steps: set[float] = set()
    for r in ratios[1:]:
        if 0.0 < r < 1.0:
            for k in range(min_dim, embedding_dim):
                steps.add(math.log((k + 0.5) / embedding_dim) / math.log(r))
    points = sorted(s for s in steps if s > 0)
    edges = [0.0, *points]
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])] + [edges[-1] + 1.0]
    best: tuple[int, float] | None = None
    smallest = None
    for alpha in candidates:
        bits = mixed_dim_bits(
            sizes, dims_from_ratios(ratios, sizes, alpha, embedding_dim, min_dim), embedding_dim
        )
        smallest = bits if smallest is None else min(smallest, bits)
        if bits / full <= budget and (best is None or bits > best[0]):
            best = (bits, alpha)
    if best is None:
        low = smallest / full if smallest is not None else float("nan")
        raise BudgetError.unreachable(
            name, budget, n, low, f"blocks {list(sizes)}, method.min_dim={min_dim}",
            "or more method.num_blocks (the first block keeps the full dimension)",
        )  # fmt: skip
    return best[1]
