"""How much ``dataset.tie_break`` changes the held-out items of a dataset (docs/results.md,
"Timestamp ties"): users with a tie at their last timestamp, and for each pair of rules the number of
users whose test (and validation) item differs; and how popular (events in the whole file) each
rule's test items are.

    RECBENCH_DATA=/path/to/data python scripts/tie_break_diff.py [--dataset ml-100k] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbench.data.splits import leave_last_two_out  # noqa: E402

LOADERS = {
    "ml-100k": "load_ml_100k",
    "ml-1m": "load_ml_1m",
    "ml-latest-small": "load_ml_latest_small",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", choices=sorted(LOADERS))
    parser.add_argument("--root", default=os.environ.get("RECBENCH_DATA", "data"))
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of tie_break=random"
    )
    args = parser.parse_args()
    from recbench.data import movielens

    inter = getattr(movielens, LOADERS[args.dataset])(args.root)
    order = inter.time_order()
    user, time = inter.user[order], inter.timestamp[order]
    last = np.r_[user[1:] != user[:-1], True]
    last_time = np.repeat(time[last], np.bincount(np.unique(user, return_inverse=True)[1]))
    at_last = np.bincount(np.unique(user, return_inverse=True)[1], weights=time == last_time)
    print(
        f"{args.dataset}: {int((at_last >= 2).sum())} of {len(at_last)} users have >= 2 events "
        "at their last timestamp"
    )
    rules = [("file", 0), ("item", 0)] + [("random", s) for s in args.seeds]
    name = lambda r: r[0] if r[0] != "random" else f"random(seed {r[1]})"  # noqa: E731
    _, item_index, item_events = np.unique(inter.item, return_inverse=True, return_counts=True)
    held = {}
    for rule, seed in rules:
        split = leave_last_two_out(inter, tie_break=rule, seed=seed)
        popularity = item_events[item_index[split.test]]
        print(
            f"{name((rule, seed)):>16}: test items have {np.mean(popularity):.1f} events on "
            f"average (median {np.median(popularity):.0f})"
        )
        held[(rule, seed)] = {
            part: dict(zip(inter.user[idx].tolist(), inter.item[idx].tolist()))
            for part, idx in (("test", split.test), ("valid", split.valid))
        }
    for a, b in itertools.combinations(rules, 2):
        diff = {
            part: sum(held[a][part][u] != held[b][part][u] for u in held[a][part])
            for part in ("test", "valid")
        }
        print(
            f"{name(a):>16} vs {name(b):<16} test items differ for {diff['test']:4d} users, "
            f"validation items for {diff['valid']:4d}"
        )


if __name__ == "__main__":
    main()
