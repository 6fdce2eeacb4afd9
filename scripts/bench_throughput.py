#!/usr/bin/env python
"""Training and evaluation throughput of recbench's real training loop, per backbone x method.

Why: a table in the paper needs hundreds of runs; the harness must be limited by arithmetic and
memory bandwidth, not Python. This script times ``recbench.engine.loop.train_step`` (the exact step
``fit`` runs) on batches from the real samplers, after a warm-up, on synthetic data at fixed scales:

* ``ml100k``: 943 users x 1,682 items, 100,000 events (MovieLens-100k-like)
* ``ml1m``:   6,040 users x 3,706 items, 1,000,209 events (MovieLens-1M-like)
* ``amazon``: 31,013 users x 23,715 items, 287,107 events (Amazon-Video-Games-like)
* ``large``:  100,000 users x 1,000,000 items, 2,000,000 events (large vocabulary)
* ``huge``:   100,000 users x 10,000,000 items, 2,000,000 Zipf events plus one event for every item
  (so that the vocabulary really holds 10M ids: at the other scales items never drawn drop out of
  the prepared data, see the ``items`` column); never evaluated: it shows which layers *train* and
  in how much memory

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

A method may carry the suffix ``+fused`` (``dpq+fused``, ``mgqe+fused``): the same layer with
``train.fused_vq=true``, i.e. the nearest-centroid search in the compiled C loop of
``recbench.embeddings.vq_kernel`` (same codes and results bit for bit).

``--interleave`` builds every case of a (scale, model) group first and then times their windows in
turn (case A window 1, case B window 1, ..., case A window 2, ...), so that compared methods see
the same machine state: use it for ratios on a shared machine (``relative``: the median over
rounds of each case's samples/s divided by the group's first case's in the same round). ``--losses`` times each case under several training
losses (e.g. ``bce,sampled_softmax,ce`` for SASRec; ``--num-sampled`` sets ``train.num_sampled``);
``--no-epoch`` skips the real-epoch timing (``epoch_s`` is then estimated as batches per epoch x
the median step time, and ``epoch_rate`` is nan). ``--isolate`` runs every (scale, model, method,
sparse) case in its own subprocess, so that ``peak_MiB`` on the CPU (the process's peak resident
memory, which never decreases) is that case's own peak; a case that fails there (e.g. out of
memory) is reported as FAILED with its exit status.

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
from recbench.engine.device import flush_denormals  # noqa: E402
from recbench.engine.loop import train_step  # noqa: E402
from recbench.engine.losses import loss_function  # noqa: E402
from recbench.engine.optim import make_optimizer  # noqa: E402

SCALES = {
    "ml100k": (943, 1_682, 100_000),
    "ml1m": (6_040, 3_706, 1_000_209),
    "amazon": (31_013, 23_715, 287_107),
    "large": (100_000, 1_000_000, 2_000_000),
    "huge": (100_000, 10_000_000, 2_000_000),
}
ALL_METHODS = [
    "full",
    "hashing",
    "bloom",
    "qr",
    "mixed_dim",
    "low_rank",
    "scalar_quant",
    "dpq",
    "mgqe",
]
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
    loss: str
    items: int
    sparse: bool
    device: str
    batch_size: int
    samples_per_s: float
    spread: float
    epoch_s: float
    epoch_rate: float
    eval_s: float
    peak_mib: float
    step_ms: float = float("nan")
    relative: float = float("nan")
    #: CPU: growth of the process's current resident memory from before the model was built to
    #: after the timed steps (model, gradients, optimizer state, sampler); nan on CUDA.
    rss_growth_mib: float = float("nan")


def synthetic(scale: str, seed: int = 0) -> Interactions:
    """One of the fixed ``SCALES``."""
    return synthetic_sized(
        *SCALES[scale], seed=seed, name=f"bench-{scale}", cover_items=scale == "huge"
    )


def synthetic_sized(
    users: int,
    items: int,
    events: int,
    seed: int = 0,
    name: str = "bench",
    cover_items: bool = False,
) -> Interactions:
    """Uniform users, Zipf(1) items, increasing timestamps; at least 3 events per user;
    ``cover_items``: one more event for every item (by a random user), so none drops out."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    weights /= weights.sum()
    base = np.repeat(np.arange(1, users + 1), 3)
    extra = rng.integers(1, users + 1, size=max(events - len(base), 0))
    user = np.concatenate([base, extra])
    item = rng.choice(np.arange(1, items + 1), size=len(user), p=weights)
    if cover_items:
        user = np.concatenate([user, rng.integers(1, users + 1, size=items)])
        item = np.concatenate([item, np.arange(1, items + 1)])
    return Interactions(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        timestamp=np.arange(len(user), dtype=np.int64),
        name=name,
    )


def compose(
    model: str, method: str, batch_size: int, sparse: bool, device: str, extra: tuple[str, ...] = ()
) -> object:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import recbench.config  # noqa: F401 - registers the schema the config's defaults name

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(
            "config",
            overrides=[
                f"model={model}", f"method={method}", f"train.batch_size={batch_size}",
                f"train.sparse={str(sparse).lower()}", f"train.device={device}", "tracking=none",
                *extra,
            ],
        )  # fmt: skip


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """The process's resident memory now (Linux ``/proc/self/statm``), in MiB; nan elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * resource.getpagesize() / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Case:
    """A model ready to train on real batches, built exactly as ``recbench.run`` builds it."""

    loss: str
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
    loss: str | None = None,
    num_sampled: int | None = None,
) -> Case:
    """Model, task (sampler + evaluator), loss, optimizer and generator for one benchmark case
    (shared with ``profile_step.py``); the model's default loss (SASRec: the paper's ``bce``)
    unless ``loss`` names another (``num_sampled``: ``train.num_sampled`` of the sampled softmax);
    ``compile_loss`` wraps the loss in ``torch.compile`` as ``train.compile=true`` does."""
    method, _, mode = method.partition("+")  # dpq+fused: train.fused_vq=true
    if mode not in ("", "fused"):
        raise ValueError(f"unknown method suffix +{mode} (only +fused, for dpq and mgqe)")
    if loss and "@" in loss:  # e.g. sampled_softmax@1000
        loss, _, count = loss.partition("@")
        num_sampled = int(count)
    extra = [f"train.loss={loss}"] if loss else []
    if num_sampled:
        extra.append(f"train.num_sampled={num_sampled}")
    cfg = compose(model_name, method, batch_size, sparse, device_name, tuple(extra))
    # no weight decay, as this benchmark always ran (sparse cases could not have it)
    return case_from_config(data, cfg, compile_loss, weight_decay=0.0, fused=mode == "fused")


def case_from_config(
    data: PreparedData,
    cfg: Any,
    compile_loss: bool = False,
    weight_decay: float | None = None,
    fused: bool = False,
) -> Case:
    """The case a composed config describes (``setup_case``'s second half; also used by
    ``bench_method_cost.py``, which edits ``method.budget`` in one composed config instead of
    composing again). Adam's weight decay: ``weight_decay``, else the config's
    ``train.weight_decay``, as ``fit`` uses it."""
    from recbench.assembly import build_model
    from recbench.engine.device import resolve_device
    from recbench.tasks import build_task

    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device)
    if fused:  # the compiled DPQ/MGQE search (train.fused_vq=true)
        from recbench.embeddings.vq import use_fused_search

        use_fused_search(model)
    return Case(
        loss=str(cfg.train.loss)
        + (f"@{cfg.train.num_sampled}" if cfg.train.loss == "sampled_softmax" else ""),
        model=model,
        parts=build_task(data, cfg, device),
        loss_fn=loss_function(cfg.train.loss, compile_loss),
        optimizer=make_optimizer(
            model,
            cfg.train.lr,
            cfg.train.weight_decay if weight_decay is None else weight_decay,
            cfg.train.sparse,
        ),
        generator=torch.Generator(device=device).manual_seed(0),
        device=device,
    )


def bench_one(
    data: PreparedData,
    scale: str,
    model_name: str,
    method: str,
    sparse: bool,
    args: argparse.Namespace,
) -> Row:
    batch_size = args.batch_size if model_name != "sasrec" else args.seq_batch_size
    gc.collect()
    rss_before = current_rss_mib()
    case = setup_case(
        data, model_name, method, batch_size, sparse, args.device, getattr(args, "compile", False),
        getattr(args, "loss", None), getattr(args, "num_sampled", None),
    )  # fmt: skip
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
    if getattr(
        args, "compile", False
    ):  # compile for both batch sizes of an epoch (the last is short)
        for batch in parts.sampler.epoch(generator):
            train_step(model, batch, loss_fn, optimizer)
    for _ in range(args.warmup):
        train_step(model, next(stream), loss_fn, optimizer)
    sync(device)
    rates, windows = [], []
    for _ in range(args.repeats):
        samples = 0
        total = torch.zeros((), device=device)
        started = time.perf_counter()
        for _ in range(args.steps):
            batch = next(stream)
            total += train_step(model, batch, loss_fn, optimizer)
            samples += batch.num_samples
        sync(device)
        windows.append(time.perf_counter() - started)
        rates.append(samples / windows[-1])
    rate = statistics.median(rates)
    sync(device)
    rss_growth = current_rss_mib() - rss_before if device.type == "cpu" else float("nan")
    if getattr(args, "no_epoch", False):  # estimated from the step time
        epoch_s = len(parts.sampler) * statistics.median(windows) / args.steps
        per_epoch_samples = float("nan")
    else:
        started = time.perf_counter()
        per_epoch_samples = 0
        for batch in parts.sampler.epoch(generator):  # one real epoch: sampling included
            total += train_step(model, batch, loss_fn, optimizer)
            per_epoch_samples += batch.num_samples
        float(total)
        epoch_s = time.perf_counter() - started
    eval_times = []
    skip_eval = args.no_eval or (scale in ("large", "huge") and not args.eval_large)
    if not skip_eval:
        for _ in range(args.repeats):
            sync(device)
            started = time.perf_counter()
            parts.evaluator.evaluate(model, "test")
            sync(device)
            eval_times.append(time.perf_counter() - started)
    row = Row(
        scale=scale, model=model_name, method=method, loss=case.loss, items=data.num_items, sparse=sparse,
        device=str(device),
        batch_size=batch_size, samples_per_s=rate, spread=max(rates) - min(rates),
        epoch_s=epoch_s, epoch_rate=per_epoch_samples / epoch_s, eval_s=statistics.median(eval_times) if eval_times else float("nan"),
        peak_mib=peak_mib(device), step_ms=1e3 * statistics.median(windows) / args.steps,
        rss_growth_mib=rss_growth,
    )  # fmt: skip
    del model, optimizer
    gc.collect()
    return row


def bench_interleaved(
    data: PreparedData,
    scale: str,
    model_name: str,
    cases: list[tuple[str, str | None, bool]],
    args: argparse.Namespace,
) -> list[Row]:
    """``--interleave``: every (method, loss, sparse) case of one group built first, their timed
    windows then run in turn, so that compared cases share the machine's state; then each case's
    epoch (unless ``--no-epoch``) and evaluation."""
    batch_size = args.batch_size if model_name != "sasrec" else args.seq_batch_size
    built = []
    for method, loss, sparse in cases:
        case = setup_case(data, model_name, method, batch_size, sparse, args.device,
                          getattr(args, "compile", False), loss, getattr(args, "num_sampled", None))  # fmt: skip

        def batches(case: Case = case):  # noqa: ANN202 - endless stream of real batches
            while True:
                yield from case.parts.sampler.epoch(case.generator)

        built.append((method, sparse, case, batches()))
    flush_denormals()
    for _, _, case, stream in built:
        case.model.train()
        for _ in range(args.warmup):
            train_step(case.model, next(stream), case.loss_fn, case.optimizer)
    rates: list[list[float]] = [[] for _ in built]
    windows: list[list[float]] = [[] for _ in built]
    for _ in range(args.repeats):
        for i, (_, _, case, stream) in enumerate(built):
            batches_ = [next(stream) for _ in range(args.steps)]  # sampling outside the window
            sync(case.device)
            started = time.perf_counter()
            total = torch.zeros((), device=case.device)
            for batch in batches_:
                total += train_step(case.model, batch, case.loss_fn, case.optimizer)
            float(total)
            sync(case.device)
            seconds = time.perf_counter() - started
            windows[i].append(seconds)
            rates[i].append(sum(b.num_samples for b in batches_) / seconds)
    rows = []
    for i, (method, sparse, case, _) in enumerate(built):
        step_s = statistics.median(windows[i]) / args.steps
        epoch_s, epoch_rate = len(case.parts.sampler) * step_s, float("nan")
        if not args.no_epoch:
            started, samples = time.perf_counter(), 0
            total = torch.zeros((), device=case.device)
            for batch in case.parts.sampler.epoch(case.generator):
                total += train_step(case.model, batch, case.loss_fn, case.optimizer)
                samples += batch.num_samples
            float(total)
            epoch_s = time.perf_counter() - started
            epoch_rate = samples / epoch_s
        eval_times = []
        if not (args.no_eval or (scale in ("large", "huge") and not args.eval_large)):
            for _ in range(args.repeats):
                sync(case.device)
                started = time.perf_counter()
                case.parts.evaluator.evaluate(case.model, "test")
                sync(case.device)
                eval_times.append(time.perf_counter() - started)
        rate = statistics.median(rates[i])
        rows.append(Row(
            scale=scale, model=model_name, method=method, loss=case.loss, items=data.num_items,
            sparse=sparse, device=str(case.device), batch_size=batch_size, samples_per_s=rate,
            spread=max(rates[i]) - min(rates[i]), epoch_s=epoch_s, epoch_rate=epoch_rate,
            eval_s=statistics.median(eval_times) if eval_times else float("nan"),
            peak_mib=peak_mib(case.device), step_ms=1e3 * step_s,
            # median over rounds of the rate relative to the first case's in the same round:
            # robust to the machine's load drifting between rounds
            relative=statistics.median(r / r0 for r, r0 in zip(rates[i], rates[0])),
        ))  # fmt: skip
    return rows


HEAD = (
    f"{'scale':7} {'model':7} {'method':13} {'loss':15} {'items':>10} {'sparse':6} {'device':6} {'batch':>6} "
    f"{'samples/s':>12} {'spread':>10} {'step_ms':>8} {'epoch_s':>9} {'epoch_rate':>11} {'eval_s':>8} "
    f"{'peak_MiB':>9} {'relative':>8} {'rss+MiB':>8}"
)


def print_table(rows: list[Row], header: bool = True) -> None:
    if header:
        print(HEAD)
        print("-" * len(HEAD))
    for r in rows:
        print(
            f"{r.scale:7} {r.model:7} {r.method:13} {r.loss:15} {r.items:>10,} {str(r.sparse):6} {r.device:6} "
            f"{r.batch_size:>6} {r.samples_per_s:>12,.0f} {r.spread:>10,.0f} {r.step_ms:>8.2f} "
            f"{r.epoch_s:>9.2f} {r.epoch_rate:>11,.0f} {r.eval_s:>8.3f} {r.peak_mib:>9.0f} "
            f"{r.relative:>8.2f} {r.rss_growth_mib:>8.0f}",
            flush=True,
        )


def suite_of(args: argparse.Namespace) -> list[tuple[str, str, list[str], tuple[bool, ...]]]:
    """The (scale, model, methods, sparse modes) groups the arguments ask for."""
    if not any(v is not None for v in (args.scales, args.models, args.methods, args.sparse)):
        return DEFAULT_SUITE
    scales = (args.scales or "ml1m").split(",")
    models = (args.models or "gmf").split(",")
    methods = ALL_METHODS if args.methods in (None, "all") else args.methods.split(",")
    modes = {"dense": (False,), "sparse": (True,), "both": (False, True), None: (False,)}[
        args.sparse
    ]
    return [(s, m, methods, modes) for s in scales for m in models]


def run_isolated(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    """``--isolate``: one subprocess per case (same arguments, narrowed to the case), rows collected
    from the children's CSVs; a child that dies (out of memory) is reported with its status."""
    import subprocess
    import tempfile

    base = [a for a in argv if a not in ("--isolate", "--interleave")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale, model, methods, modes in suite_of(args):
            for method in methods:
                for sparse in modes:
                    out = Path(tmp) / f"{scale}-{model}-{method}-{sparse}.csv"
                    child = [sys.executable, str(Path(__file__).resolve()), *base, "--scales", scale,
                             "--models", model, "--methods", method,
                             "--sparse", "sparse" if sparse else "dense", "--out", str(out)]  # fmt: skip
                    done = subprocess.run(child, capture_output=True, text=True)
                    if done.returncode != 0 or not out.is_file():
                        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                        print(
                            f"{scale} {model} {method} sparse={sparse}: FAILED (exit {done.returncode}) {tail[0]}"
                        )
                        continue
                    for record in csv.DictReader(out.open()):
                        kinds = {f.name: f.type for f in Row.__dataclass_fields__.values()}
                        values = {
                            k: (v == "True") if kinds[k] in ("bool", bool) else
                            int(v) if kinds[k] in ("int", int) else
                            float(v) if kinds[k] in ("float", float) else v
                            for k, v in record.items()
                        }  # fmt: skip
                        rows.append(Row(**values))
                        print_table(rows[-1:], header=len(rows) == 1)
    print("\nsummary")
    print_table(rows)
    write_csv(rows, Path(args.out))
    return 0


def write_csv(rows: list[Row], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(Row.__dataclass_fields__))
        for r in rows:
            writer.writerow([getattr(r, f) for f in Row.__dataclass_fields__])
    print(f"\nwrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scales", default=None, help=f"comma list of {','.join(SCALES)} (default: the suite)"
    )
    parser.add_argument(
        "--models", default=None, help="comma list of backbones (default: the suite)"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma list (default: the suite); 'all' = {','.join(ALL_METHODS)}",
    )
    parser.add_argument("--sparse", choices=("dense", "sparse", "both"), default=None,
                        help="embedding gradients (default: the suite's choice per case)")  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=4096, help="examples per step (GMF/NeuMF/...)"
    )
    parser.add_argument(
        "--seq-batch-size", type=int, default=128, help="sequences per step (SASRec)"
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each step's loss (train.compile=true); compiling happens in the warm-up")  # fmt: skip
    parser.add_argument("--eval-large", action="store_true",
                        help="also time full ranking at the large scale (100k users x 1M items: minutes on a CPU)")  # fmt: skip
    parser.add_argument("--interleave", action="store_true",
                        help="time the cases of each (scale, model) group in alternating windows (for ratios on a shared machine)")  # fmt: skip
    parser.add_argument("--losses", default=None,
                        help="comma list of training losses per case (default: each model's own), e.g. "
                             "bce,sampled_softmax@100,sampled_softmax@1000,ce (@: train.num_sampled)")  # fmt: skip
    parser.add_argument(
        "--num-sampled", type=int, default=None, help="train.num_sampled for loss sampled_softmax"
    )
    parser.add_argument("--no-epoch", action="store_true",
                        help="skip the real epoch; epoch_s is then batches per epoch x the median step time")  # fmt: skip
    parser.add_argument("--isolate", action="store_true",
                        help="each case in its own subprocess (per-case peak memory on the CPU)")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "throughput.csv"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isolate:
        return run_isolated(parser, args, list(sys.argv[1:] if argv is None else argv))

    suite = suite_of(args)
    for scale, model, methods, _ in suite:
        if scale not in SCALES:
            parser.error(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
        unknown = [
            m
            for m in methods
            if not (ROOT / "conf" / "method" / f"{m.partition('+')[0]}.yaml").is_file()
        ]
        if unknown or not (ROOT / "conf" / "model" / f"{model}.yaml").is_file():
            parser.error(
                f"unknown model {model!r} or methods {unknown}; see conf/model and conf/method"
            )

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"compile {'on' if args.compile else 'off'}", flush=True)  # fmt: skip
    rows: list[Row] = []
    cache: dict[tuple[str, str], PreparedData] = {}
    for scale, model, methods, modes in suite:
        task = "sequential" if model == "sasrec" else "ranking"
        if (scale, task) not in cache:
            cache[(scale, task)] = prepare(synthetic(scale), task, seed=0)
        losses = args.losses.split(",") if args.losses else [None]
        if args.interleave:
            cases = [(m, loss, sp) for m in methods for loss in losses for sp in modes]
            try:
                group = bench_interleaved(cache[(scale, task)], scale, model, cases, args)
            except Exception as exc:  # noqa: BLE001 - one failing group must not hide the rest
                print(f"{scale} {model}: FAILED {type(exc).__name__}: {exc}")
                continue
            first = not rows
            rows.extend(group)
            print_table(group, header=first)
            continue
        for method in methods:
            for loss in losses:
                for sparse in modes:
                    args.loss = loss
                    try:
                        rows.append(
                            bench_one(cache[(scale, task)], scale, model, method, sparse, args)
                        )
                    except Exception as exc:  # noqa: BLE001 - one failing case must not hide the rest
                        print(
                            f"{scale} {model} {method} sparse={sparse}: FAILED {type(exc).__name__}: {exc}"
                        )
                        continue
                    print_table(rows[-1:], header=len(rows) == 1)
    print("\nsummary")
    print_table(rows)
    write_csv(rows, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
