"""Is there any difference among the settings of one method (e.g. Bloom's seven hash families)?

The report compares each compressed cell with the full model (paired t-tests). A question such as
"does the hash family matter?" is about the rows of one method against each other: this script
reads a report's ``runs.csv`` and runs a one-way ANOVA and a Kruskal-Wallis test (all groups
equal vs. not), plus Friedman's test when 3 or more groups have the same seeds (blocks by seed), over
the groups of one knob. Prints one table; nothing is written.

    python scripts/compare_settings.py outputs/reports/bloom_hashes --method bloom --knob hash_family
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from scipy import stats


def groups_of(runs: pd.DataFrame, method: str, knob: str, metric: str) -> dict[str, pd.Series]:
    """Per value of ``knob``: the metric of the method's finished runs, indexed by seed."""
    rows = runs[(runs["method"] == method) & (runs["status"] == "FINISHED")]
    values = rows["knobs"].map(lambda text: str(json.loads(text).get(knob, "")))
    return {
        str(value): block.set_index("seed")[metric].astype(float).sort_index()
        for value, block in rows.assign(_value=values).groupby("_value")
    }


def compare(groups: dict[str, pd.Series]) -> dict[str, float]:
    """p-values of the three tests (NaN where a test does not apply)."""
    samples = [g.to_numpy() for g in groups.values()]
    out = {
        "anova_p": float(stats.f_oneway(*samples).pvalue),
        "kruskal_p": float(stats.kruskal(*samples).pvalue),
        "friedman_p": float("nan"),
    }
    seeds = [tuple(g.index) for g in groups.values()]
    if len(samples) >= 3 and len(set(seeds)) == 1 and len(seeds[0]) >= 2:
        out["friedman_p"] = float(stats.friedmanchisquare(*samples).pvalue)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report folder (holds runs.csv)")
    parser.add_argument("--method", required=True, help="method whose settings are compared")
    parser.add_argument("--knob", required=True, help="the knob whose values form the groups")
    parser.add_argument("--metric", action="append", default=None,
                        help="metric column(s) (default test/hr_at_10 and test/ndcg_at_10)")  # fmt: skip
    args = parser.parse_args(argv)
    path = args.report / "runs.csv"
    if not path.is_file():
        print(f"compare_settings: error: {path} is missing; pass a folder written by "
              "python -m recbench.report", file=sys.stderr)  # fmt: skip
        return 2
    runs = pd.read_csv(path, dtype={"seed": str})
    metrics = args.metric or ["test/hr_at_10", "test/ndcg_at_10"]
    for metric in metrics:
        if metric not in runs:
            print(f"compare_settings: error: no column {metric!r} in {path}", file=sys.stderr)
            return 2
        groups = groups_of(runs, args.method, args.knob, metric)
        if len(groups) < 2:
            print(f"compare_settings: error: {args.method} has {len(groups)} value(s) of "
                  f"{args.knob!r} in {path}; need at least 2", file=sys.stderr)  # fmt: skip
            return 2
        p = compare(groups)
        sizes = sorted({len(g) for g in groups.values()})
        print(
            f"{metric}: {len(groups)} groups of {args.knob}, n = {'/'.join(map(str, sizes))} per group"
        )
        print("| value | mean | std | n |\n|---|---:|---:|---:|")
        for value, g in sorted(groups.items(), key=lambda kv: -kv[1].mean()):
            print(f"| {value} | {g.mean():.4f} | {g.std(ddof=1):.4f} | {len(g)} |")
        print(f"one-way ANOVA p = {p['anova_p']:.3f}; Kruskal-Wallis p = {p['kruskal_p']:.3f}; "
              f"Friedman (blocks = seeds) p = {p['friedman_p']:.3f}\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
