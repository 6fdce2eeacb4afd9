"""Which of two training settings is better, judged on validation data over several seeds?

Why: a study picks its best trial on ONE seed's validation metric among many trials, so that value
is optimistic (the winner's curse: on ml-100k's 943 validation users, NeuMF's best trial scored
0.0836 on seed 0 and 0.071-0.075 on seeds 1-4). Before a tuned setting replaces a default (or one
candidate another), compare them on the final runs' *validation* metric (``best/`` = the restored
best epoch's value) over the seeds that did not take part in the selection: the test split plays no
part in the choice. Each folder holds the run folders of one setting (a sweep's
``hydra.sweep.dir``); runs are paired by seed. Prints per-seed values, means and the report's
two-sided paired t-test and Wilcoxon test (none below 3 seeds); nothing is written.

    python scripts/compare_validation.py outputs/final/neumf_tuned outputs/final/neumf_default
    python scripts/compare_validation.py A B --metric best/hr_at_10 --exclude-seeds 0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from recbench.record import higher_is_better
from recbench.report.stats import Comparison, compare_paired


def seed_values(folder: Path, metric: str) -> dict[int, float]:
    """``metric`` of each FINISHED run under ``folder`` (a run folder itself counts), by seed."""
    files = [folder / "metrics.json"] if (folder / "metrics.json").is_file() else []
    out: dict[int, float] = {}
    for path in files or sorted(folder.glob("*/metrics.json")):
        run = json.loads(path.read_text())
        value = run.get("metrics", {}).get(metric)
        if run.get("status") != "FINISHED" or value is None:
            continue
        seed = int(run["seed"])
        if seed in out:
            raise ValueError(f"{folder} holds two runs of seed {seed}; give one setting per folder")
        out[seed] = float(value)
    return out


def compare(
    a: dict[int, float], b: dict[int, float], exclude: Sequence[int] = (), higher: bool = True
) -> tuple[list[int], float, float, Comparison]:
    """Seeds both have (minus ``exclude``), mean of A, mean of B, and the report's paired
    comparison of A against B (``recbench.report.stats.compare_paired``: t-test, Wilcoxon)."""
    seeds = sorted((set(a) & set(b)) - set(exclude))
    xs, ys = [a[s] for s in seeds], [b[s] for s in seeds]
    mean_a = sum(xs) / len(xs) if xs else math.nan
    mean_b = sum(ys) / len(ys) if ys else math.nan
    result = compare_paired(dict(zip(seeds, xs)), dict(zip(seeds, ys)), higher)
    return seeds, mean_a, mean_b, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="run folders of setting A (e.g. the tuned one)")
    parser.add_argument("b", type=Path, help="run folders of setting B (e.g. the default)")
    parser.add_argument(
        "--metric",
        default="best/ndcg_at_10",
        help="a validation metric of metrics.json (default: best/ndcg_at_10)",
    )
    parser.add_argument(
        "--exclude-seeds",
        default="",
        help="comma-separated seeds left out, e.g. 0 (the seed the study tuned on)",
    )
    args = parser.parse_args(argv)
    if not args.metric.startswith("best/"):
        print(f"compare_validation: error: --metric {args.metric} is not a validation metric "
              "(best/...); the test split must not choose settings", file=sys.stderr)  # fmt: skip
        return 2
    exclude = [int(s) for s in args.exclude_seeds.split(",") if s.strip()]
    try:
        a, b = seed_values(args.a, args.metric), seed_values(args.b, args.metric)
    except ValueError as err:
        print(f"compare_validation: error: {err}", file=sys.stderr)
        return 2
    higher = higher_is_better(args.metric)  # RMSE, MAE: lower is better
    seeds, mean_a, mean_b, result = compare(a, b, exclude, higher)
    if not seeds:
        print(f"compare_validation: error: no seed has a FINISHED run with {args.metric} in both "
              f"{args.a} and {args.b}", file=sys.stderr)  # fmt: skip
        return 2
    print(f"{'seed':>6} {'A':>9} {'B':>9} {'A - B':>9}")
    for s in seeds:
        print(f"{s:>6} {a[s]:9.4f} {b[s]:9.4f} {a[s] - b[s]:+9.4f}")
    print(f"{'mean':>6} {mean_a:9.4f} {mean_b:9.4f} {mean_a - mean_b:+9.4f}")
    sign = 1.0 if higher else -1.0
    better = "A" if sign * (mean_a - mean_b) > 0 else "B" if mean_a != mean_b else "neither"
    print(f"{args.metric} over seeds {seeds}: {better} is better; paired t-test p = "
          f"{result.p_value:.3g}, Wilcoxon p = {result.p_wilcoxon:.3g} "
          f"(A: {args.a}, B: {args.b})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
