#!/usr/bin/env python
"""Training and evaluation throughput of recbench's real training loop, per backbone x method.

Why: a table in the paper needs hundreds of runs; the harness must be limited by arithmetic and
memory bandwidth, not Python. This script times ``recbench.training.train_step`` (the exact step
``fit`` runs) on batches from the real samplers, after a warm-up, on synthetic data at fixed scales:

* ``ml100k``: 943 users x 1,682 items, 100,000 events (MovieLens-100k-like)
* ``ml1m``:   6,040 users x 3,706 items, 1,000,209 events (MovieLens-1M-like)
* ``amazon``: 31,013 users x 23,715 items, 287,107 events (Amazon-Video-Games-like)
* ``large``:  100,000 users x 1,000,000 items, 2,000,000 events (large vocabulary)

Events are Zipf-popular items for uniform users with increasing timestamps (the content does not
matter for speed). Columns:

* ``samples/s``: scored (context, item) pairs per second (a positive with 4 negatives = 5), the
  median over ``--repeats`` timed windows of ``--steps`` steps, with the spread (max - min);
* ``epoch_s``: wall seconds of one real epoch (the sampler's shuffling and negative sampling
  included) and ``epoch_rate``, its samples per second: the end-to-end figure;
* ``eval_s``: one full-ranking evaluation of every test user (median of the repeats); skipped
  (nan) at the large scale unless ``--eval-large``;
* ``peak_MiB``: peak device memory (CUDA) or peak resident memory of the process (CPU, coarse);
* ``sparse``: whether embedding tables used sparse gradients + SparseAdam (``train.sparse``).

``--compile`` wraps each step's loss in ``torch.compile`` (``train.compile=true``); the warm-up then
first trains one untimed epoch so that both batch shapes of an epoch are compiled before timing.

Run ``python scripts/bench_throughput.py --help``; results go to the terminal and to CSV under
``outputs/bench/``. The default suite finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import gc
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbench.data.interactions import Interactions  # noqa: E402
from recbench.data.prepared import PreparedData, prepare  # noqa: E402
from recbench.training import flush_denormals, loss_function, make_optimizer, train_step  # noqa: E402

SCALES = {
    "ml100k": (943, 1_682, 100_000),
    "ml1m": (6_040, 3_706, 1_000_209),
    "amazon": (31_013, 23_715, 287_107),
    "large": (100_000, 1_000_000, 2_000_000),
}
ALL_METHODS = ["full", "hashing", "bloom", "qr", "mixed_dim", "low_rank", "scalar_quant", "dpq", "mgqe"]
DEFAULT_SUITE = [
    # (scale, model, methods, sparse modes)
    ("ml1m", "gmf", ALL_METHODS, (False,)),
    ("ml1m", "gmf", ["full", "hashing", "bloom"], (True,)),
    ("ml1m", "neumf", ["full", "mgqe"], (False,)),
    ("amazon", "sasrec", ["full", "mgqe"], (False,)),
    ("large", "gmf", ["full", "hashing"], (False, True)),
]


@dataclass
class Row:
    scale: str
    model: str
    method: str
    sparse: bool
    device: str
    batch_size: int
    samples_per_s: float
    spread: float
    epoch_s: float
    epoch_rate: float
    eval_s: float
    peak_mib: float


def synthetic(scale: str, seed: int = 0) -> Interactions:
    """One of the fixed ``SCALES``."""
    return synthetic_sized(*SCALES[scale], seed=seed, name=f"bench-{scale}")


def synthetic_sized(users: int, items: int, events: int, seed: int = 0, name: str = "bench") -> Interactions:
    """Uniform users, Zipf(1) items, increasing timestamps; at least 3 events per user."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    weights /= weights.sum()
    base = np.repeat(np.arange(1, users + 1), 3)
    extra = rng.integers(1, users + 1, size=max(events - len(base), 0))
    user = np.concatenate([base, extra])
    item = rng.choice(np.arange(1, items + 1), size=len(user), p=weights)
    return Interactions(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        timestamp=np.arange(len(user), dtype=np.int64),
        name=name,
    )


def compose(model: str, method: str, batch_size: int, sparse: bool, device: str) -> object:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(
            "config",
            overrides=[
                f"model={model}", f"method={method}", f"train.batch_size={batch_size}",
                f"train.sparse={str(sparse).lower()}", f"train.device={device}", "tracking=none",
            ],
        )  # fmt: skip


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Case:
    """A model ready to train on real batches, built exactly as ``recbench.run`` builds it."""

    model: torch.nn.Module
    parts: Any
    loss_fn: Any
    optimizer: Any
    generator: torch.Generator
    device: torch.device


def setup_case(
    data: PreparedData,
    model_name: str,
    method: str,
    batch_size: int,
    sparse: bool,
    device_name: str,
    compile_loss: bool = False,
) -> Case:
    """Model, task (sampler + evaluator), loss, optimizer and generator for one benchmark case
    (shared with ``profile_step.py``); SASRec trains with the paper's ``bce`` loss;
    ``compile_loss`` wraps the loss in ``torch.compile`` as ``train.compile=true`` does."""
    from recbench.run import build_model
    from recbench.tasks import build_task
    from recbench.training import resolve_device

    device = resolve_device(device_name)
    cfg = compose(model_name, method, batch_size, sparse, device_name)
    if model_name == "sasrec":
        cfg.train.loss = "bce"
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device)
    return Case(
        model=model,
        parts=build_task(data, cfg, device),
        loss_fn=loss_function(cfg.train.loss, compile_loss),
        optimizer=make_optimizer(model, cfg.train.lr, 0.0, sparse),
        generator=torch.Generator(device=device).manual_seed(0),
        device=device,
    )


def bench_one(
    data: PreparedData, scale: str, model_name: str, method: str, sparse: bool, args: argparse.Namespace
) -> Row:
    batch_size = args.batch_size if model_name != "sasrec" else args.seq_batch_size
    case = setup_case(data, model_name, method, batch_size, sparse, args.device, getattr(args, "compile", False))
    model, parts, loss_fn, optimizer = case.model, case.parts, case.loss_fn, case.optimizer
    generator, device = case.generator, case.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def batches():  # noqa: ANN202 - endless stream of real batches
        while True:
            yield from parts.sampler.epoch(generator)

    flush_denormals()  # as fit() does
    stream = batches()
    model.train()
    if getattr(args, "compile", False):  # compile for both batch sizes of an epoch (the last is short)
        for batch in parts.sampler.epoch(generator):
            train_step(model, batch, loss_fn, optimizer)
    for _ in range(args.warmup):
        train_step(model, next(stream), loss_fn, optimizer)
    sync(device)
    rates = []
    for _ in range(args.repeats):
        samples = 0
        total = torch.zeros((), device=device)
        started = time.perf_counter()
        for _ in range(args.steps):
            batch = next(stream)
            total += train_step(model, batch, loss_fn, optimizer)
            samples += batch.num_samples
        sync(device)
        rates.append(samples / (time.perf_counter() - started))
    rate = statistics.median(rates)
    sync(device)
    started = time.perf_counter()
    per_epoch_samples = 0
    for batch in parts.sampler.epoch(generator):  # one real epoch: sampling included
        total += train_step(model, batch, loss_fn, optimizer)
        per_epoch_samples += batch.num_samples
    float(total)
    epoch_s = time.perf_counter() - started
    eval_times = []
    skip_eval = args.no_eval or (scale == "large" and not args.eval_large)
    if not skip_eval:
        for _ in range(args.repeats):
            sync(device)
            started = time.perf_counter()
            parts.evaluator.evaluate(model, "test")
            sync(device)
            eval_times.append(time.perf_counter() - started)
    row = Row(
        scale=scale, model=model_name, method=method, sparse=sparse, device=str(device),
        batch_size=batch_size, samples_per_s=rate, spread=max(rates) - min(rates),
        epoch_s=epoch_s, epoch_rate=per_epoch_samples / epoch_s, eval_s=statistics.median(eval_times) if eval_times else float("nan"),
        peak_mib=peak_mib(device),
    )  # fmt: skip
    del model, optimizer
    gc.collect()
    return row


HEAD = (
    f"{'scale':7} {'model':7} {'method':13} {'sparse':6} {'device':6} {'batch':>6} "
    f"{'samples/s':>12} {'spread':>10} {'epoch_s':>9} {'epoch_rate':>11} {'eval_s':>8} {'peak_MiB':>9}"
)


def print_table(rows: list[Row], header: bool = True) -> None:
    if header:
        print(HEAD)
        print("-" * len(HEAD))
    for r in rows:
        print(
            f"{r.scale:7} {r.model:7} {r.method:13} {str(r.sparse):6} {r.device:6} {r.batch_size:>6} "
            f"{r.samples_per_s:>12,.0f} {r.spread:>10,.0f} {r.epoch_s:>9.2f} {r.epoch_rate:>11,.0f} "
            f"{r.eval_s:>8.3f} "
            f"{r.peak_mib:>9.0f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default=None, help=f"comma list of {','.join(SCALES)} (default: the suite)")
    parser.add_argument("--models", default=None, help="comma list of backbones (default: the suite)")
    parser.add_argument("--methods", default=None, help=f"comma list (default: the suite); 'all' = {','.join(ALL_METHODS)}")
    parser.add_argument("--sparse", choices=("dense", "sparse", "both"), default=None,
                        help="embedding gradients (default: the suite's choice per case)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4096, help="examples per step (GMF/NeuMF/...)")
    parser.add_argument("--seq-batch-size", type=int, default=128, help="sequences per step (SASRec)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each step's loss (train.compile=true); compiling happens in the warm-up")  # fmt: skip
    parser.add_argument("--eval-large", action="store_true",
                        help="also time full ranking at the large scale (100k users x 1M items: minutes on a CPU)")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "throughput.csv"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    custom = any(v is not None for v in (args.scales, args.models, args.methods, args.sparse))
    if custom:
        scales = (args.scales or "ml1m").split(",")
        models = (args.models or "gmf").split(",")
        methods = ALL_METHODS if args.methods in (None, "all") else args.methods.split(",")
        modes = {"dense": (False,), "sparse": (True,), "both": (False, True), None: (False,)}[args.sparse]
        suite = [(s, m, methods, modes) for s in scales for m in models]
    else:
        suite = DEFAULT_SUITE
    for scale, model, methods, _ in suite:
        if scale not in SCALES:
            parser.error(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
        unknown = [m for m in methods if not (ROOT / "conf" / "method" / f"{m}.yaml").is_file()]
        if unknown or not (ROOT / "conf" / "model" / f"{model}.yaml").is_file():
            parser.error(f"unknown model {model!r} or methods {unknown}; see conf/model and conf/method")

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"compile {'on' if args.compile else 'off'}", flush=True)  # fmt: skip
    rows: list[Row] = []
    cache: dict[tuple[str, str], PreparedData] = {}
    for scale, model, methods, modes in suite:
        task = "sequential" if model == "sasrec" else "ranking"
        if (scale, task) not in cache:
            cache[(scale, task)] = prepare(synthetic(scale), task, seed=0)
        for method in methods:
            for sparse in modes:
                try:
                    rows.append(bench_one(cache[(scale, task)], scale, model, method, sparse, args))
                except Exception as exc:  # noqa: BLE001 - one failing case must not hide the rest
                    print(f"{scale} {model} {method} sparse={sparse}: FAILED {type(exc).__name__}: {exc}")
                    continue
                print_table(rows[-1:], header=len(rows) == 1)
    print("\nsummary")
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(Row.__dataclass_fields__))
        for r in rows:
            writer.writerow([getattr(r, f) for f in Row.__dataclass_fields__])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
