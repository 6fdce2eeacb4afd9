"""Dense against sparse embedding updates across item-vocabulary sizes: where does sparse win?

Why: dense Adam updates every row of an embedding table at every step, so its cost grows with the
vocabulary; sparse gradients (``train.sparse=true``: SparseAdam on the tables, Adam on the rest)
touch only the rows of the batch but pay for sparse bookkeeping. Which is faster depends on the
vocabulary size and the device; this script finds the crossover.

It keeps the MovieLens-1M-like shape (6,040 users, 1M events, Zipf(1) items, batch 4096, 4
negatives per positive) and varies only the number of items. For each size and method it times
``recbench.engine.loop.train_step`` exactly as ``scripts/bench_throughput.py`` does (median of
``--repeats`` windows of ``--steps`` steps after a warm-up, plus one real epoch with sampling) in
both modes, then prints one table and the crossover: the vocabulary at which the sparse/dense ratio
of end-to-end epoch throughput passes 1, interpolated linearly in log(items) between the two
measured sizes around it. CSV goes to ``outputs/bench/sparse_crossover.csv``.

    python scripts/bench_sparse_crossover.py                      # full embeddings, 6 sizes
    python scripts/bench_sparse_crossover.py --methods full,hashing --items 3706,100000,1000000
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import ROOT, bench_one, synthetic_sized  # noqa: E402

from recbench.data.prepared import prepare  # noqa: E402

DEFAULT_ITEMS = "3706,10000,30000,100000,300000,1000000"


@dataclass
class Pair:
    items: int
    method: str
    dense_rate: float
    dense_spread: float
    sparse_rate: float
    sparse_spread: float
    dense_epoch_rate: float
    sparse_epoch_rate: float

    @property
    def step_ratio(self) -> float:
        return self.sparse_rate / self.dense_rate

    @property
    def epoch_ratio(self) -> float:
        return self.sparse_epoch_rate / self.dense_epoch_rate


def crossover(pairs: list[Pair], ratio: str = "epoch_ratio") -> float | None:
    """Items at which sparse/dense first passes 1 (log-linear interpolation), None if it never
    does within the measured sizes (or sparse already wins at the smallest)."""
    ordered = sorted(pairs, key=lambda p: p.items)
    for low, high in zip(ordered, ordered[1:]):
        a, b = getattr(low, ratio), getattr(high, ratio)
        if a < 1.0 <= b:
            t = (math.log(1.0) - math.log(a)) / (math.log(b) - math.log(a))
            return math.exp(math.log(low.items) + t * (math.log(high.items) - math.log(low.items)))
    return None


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--items={text!r} must be a comma list of integers, e.g. {DEFAULT_ITEMS}"
        ) from None
    if any(v < 10 for v in values):
        raise argparse.ArgumentTypeError(f"--items={text!r}: every size must be at least 10")
    return sorted(set(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=positive_ints, default=positive_ints(DEFAULT_ITEMS),
                        help=f"comma list of item-vocabulary sizes (default {DEFAULT_ITEMS})")  # fmt: skip
    parser.add_argument("--users", type=int, default=6_040)
    parser.add_argument("--events", type=int, default=1_000_209)
    parser.add_argument("--model", default="gmf", help="a backbone in conf/model (not sasrec)")
    parser.add_argument("--methods", default="full", help="comma list of methods in conf/method")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)"
    )
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "sparse_crossover.csv"))
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if not (ROOT / "conf" / "method" / f"{m}.yaml").is_file()]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from the files in conf/method")
    if args.model == "sasrec" or not (ROOT / "conf" / "model" / f"{args.model}.yaml").is_file():
        parser.error(
            f"--model={args.model!r} must be a non-sequential backbone in conf/model, e.g. gmf"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    # bench_one reads these from the throughput script's namespace
    args.no_eval, args.eval_large, args.seq_batch_size = True, False, 128

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"{args.users} users, {args.events} events, batch {args.batch_size}", flush=True)  # fmt: skip
    head = (f"{'items':>9} {'method':9} {'dense/s':>11} {'sparse/s':>11} {'step ratio':>10} "
            f"{'dense ep/s':>11} {'sparse ep/s':>11} {'epoch ratio':>11}")  # fmt: skip
    print(head)
    pairs: list[Pair] = []
    for items in args.items:
        data = prepare(
            synthetic_sized(args.users, items, args.events, name=f"bench-{items}"),
            "ranking",
            seed=0,
        )
        for method in methods:
            dense = bench_one(data, f"v{items}", args.model, method, False, args)
            sparse = bench_one(data, f"v{items}", args.model, method, True, args)
            pair = Pair(items, method, dense.samples_per_s, dense.spread, sparse.samples_per_s, sparse.spread,
                        dense.epoch_rate, sparse.epoch_rate)  # fmt: skip
            pairs.append(pair)
            print(f"{items:>9,} {method:9} {pair.dense_rate:>11,.0f} {pair.sparse_rate:>11,.0f} "
                  f"{pair.step_ratio:>10.2f} {pair.dense_epoch_rate:>11,.0f} {pair.sparse_epoch_rate:>11,.0f} "
                  f"{pair.epoch_ratio:>11.2f}", flush=True)  # fmt: skip
        del data
    device = dense.device if pairs else args.device
    print(
        f"\ncrossover on {device} (sparse/dense passes 1; 'none' = not within the measured sizes):"
    )
    for method in methods:
        mine = [p for p in pairs if p.method == method]
        for ratio in ("epoch_ratio", "step_ratio"):
            where = crossover(mine, ratio)
            shown = f"~{where:,.0f} items" if where else "none"
            print(f"  {method:9} {ratio.replace('_', ' '):11} {shown}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*Pair.__dataclass_fields__, "step_ratio", "epoch_ratio", "device"])
        for p in pairs:
            writer.writerow([*asdict(p).values(), p.step_ratio, p.epoch_ratio, device])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
