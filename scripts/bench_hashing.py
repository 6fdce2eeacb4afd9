"""Throughput of every hash family in ``recbench.embeddings.hashing`` (ids hashed per second).

Why: hashing-trick and Bloom layers hash every id once at construction; this shows what that costs
per family (the two numpy-vectorised families against the per-id library loops).

    python scripts/bench_hashing.py                 # 1M ids, 5 repeats, all families
    python scripts/bench_hashing.py --n 100000 --families murmur3 md5

Prints a table and writes ``outputs/bench/hashing.csv``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbench.embeddings.hashing import FAMILIES, hash_ids  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="ids per run (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per family (default 5)")
    parser.add_argument(
        "--buckets", type=int, default=250_000, help="num_buckets (default 250,000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="hash seed (default 0)")
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES), help="default: all"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "bench" / "hashing.csv", help="CSV path"
    )
    return parser.parse_args(argv)


def bench(family: str, ids: np.ndarray, buckets: int, seed: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` runs of ``hash_ids`` over ``ids`` after one untimed warm-up
    run of the same size (imports, allocator and page faults would otherwise inflate run 1)."""
    hash_ids(ids, family, seed, buckets)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hash_ids(ids, family, seed, buckets)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        print("--n and --repeats must be >= 1", file=sys.stderr)
        return 2
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    rows = []
    for family in args.families:
        times = bench(family, ids, args.buckets, args.seed, args.repeats)
        median = statistics.median(times)
        rows.append(
            {
                "family": family,
                "vectorised": FAMILIES[family].vectorised,
                "ids_per_s_median": args.n / median,
                "spread_pct": 100 * (max(times) - min(times)) / median,
                "s_per_1m_ids": median * 1_000_000 / args.n,
                "n": args.n,
                "repeats": args.repeats,
            }
        )
    header = f"{'family':<10} | {'vectorised':>10} | {'ids/s (median)':>15} | {'spread':>8} | {'s per 1M ids':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['family']:<10} | {str(r['vectorised']):>10} | {r['ids_per_s_median']:>15,.0f} | "
            f"{r['spread_pct']:>7.1f}% | {r['s_per_1m_ids']:>12.4f}"
        )
    print(f"(n={args.n:,} ids, {args.repeats} repeats; spread = (max - min) / median of the times)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
