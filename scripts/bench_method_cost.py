#!/usr/bin/env python
"""Training and evaluation cost of every compression method relative to full, at equal memory.

Why (issue 16): the equal-memory leaderboard (``conf/experiment/leaderboard_gmf.yaml``) compares
the methods' quality at one serving size; what each costs to *train* belongs next to it. This
script builds GMF exactly as a leaderboard run does (``+experiment=leaderboard_gmf``: its batch
of 512 positives with 4 negatives each, lr, weight decay, BCE; each method's ``method.budget`` solved per table by
``recbench.assembly.build_model``) on ml-100k-sized tables, and times, per budget:

* ``step_ms``: one training step, ``recbench.engine.loop.train_step`` (forward, auxiliary losses,
  backward, Adam), the median over ``--rounds`` windows of ``--steps`` steps (batches drawn from
  the real sampler before each window, so sampling is not timed);
* ``eval_ms``: one full-ranking evaluation of every test user over all items
  (``evaluator.evaluate``: ``full_table`` decoded in eval mode, scores, seen items masked, top-k);
  timed once per round right after that case's training window, so the served-table caches of
  DPQ, MGQE, PEP and SQ are stale, as after every epoch of a run;
* ``x full``: the median over rounds of the case's time divided by full's in the same round. All
  cases live in one process and their windows alternate (full, method 1, ..., then the next
  round in reverse order), so the machine's load hits every method alike;
* ``hooks``: the end-of-epoch hooks ``fit`` runs (``layer.on_epoch_end``: CCE's re-clustering at
  epochs 1-3, PEP's sparsity check every epoch and its mask freeze at epoch 10) called for epochs
  1..``--hook-epochs`` (default 30, the leaderboard's ``min_epochs``) after the timed windows;
  reported as their total ms over those epochs and the largest single epoch's ms, and amortised
  into ``step+hooks x full``: (step time + hook total / (epochs x steps per epoch)) / full's step,
  with the steps of one epoch of the prepared data at this batch size;
* ``train state KiB``: bytes of the parameters, buffers and Adam moments held between steps
  (exact; measured before the hooks drop any optimizer state);
* ``peak RSS MiB train / eval``: peak resident-memory growth (``VmHWM``, not tracemalloc: torch's
  CPU tensors bypass Python's allocator) of a child forked before the parent builds any case,
  that builds the case and trains ``--warmup`` steps (train), then evaluates once (eval,
  cumulative), then runs the hooks (CSV only): page-granular, and at this scale dominated by the
  sampler's epoch arrays and the users x items score matrices that every method shares;
* ``serving KiB`` and ``% full``: ``recbench.size.model_size`` (the serving artifact's bits).

A budget a method cannot reach is reported as ``not reachable (min X)``, X the smallest budget its
solver accepts (the floor its ``BudgetError`` carries, else by bisection).
Data: synthetic ids at ml-100k's size (943 users, 1,682 items, 100,000 Zipf events;
``--users/--items/--events``), or the real ml-100k with ``--dataset ml-100k`` (``RECBENCH_DATA``).
Results: a Markdown table on the terminal and a CSV (``--out``).

    OMP_NUM_THREADS=1 python scripts/bench_method_cost.py --threads 1 --budgets 0.25,0.05
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import (  # noqa: E402
    ROOT,
    Case,
    case_from_config,
    compose,
    sync,
    synthetic_sized,
)
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

import recbench.config  # noqa: E402,F401 - registers the schema before composing
from recbench.data.prepared import PreparedData, prepare  # noqa: E402
from recbench.embeddings.base import embedding_layers  # noqa: E402
from recbench.engine.device import flush_denormals  # noqa: E402
from recbench.engine.loop import train_step  # noqa: E402
from recbench.errors import BudgetError, ConfigError, RecbenchError  # noqa: E402
from recbench.size import model_size  # noqa: E402

#: The leaderboard's methods (conf/experiment/leaderboard_gmf.yaml), in its order.
METHODS = [
    "hashing", "bloom", "qr", "mixed_dim", "low_rank", "scalar_quant", "dpq", "mgqe", "tt_rec",
    "dhe", "robe", "cce", "pep", "learned_quant",
]  # fmt: skip
EXPERIMENT = "+experiment=leaderboard_gmf"
UNREACHABLE = "not reachable"


@dataclass
class Row:
    """One (budget, method) line of the table; the measured fields are nan when not reachable."""

    budget: float
    method: str
    status: str = "ok"
    step_ms: float = math.nan
    step_ratio: float = math.nan
    eval_ms: float = math.nan
    eval_ratio: float = math.nan
    hooks_ms: float = math.nan
    hook_max_ms: float = math.nan
    hook_epochs: int = 0
    steps_per_epoch: int = 0
    step_hooks_ratio: float = math.nan
    state_kib: float = math.nan
    peak_train_mib: float = math.nan
    peak_eval_mib: float = math.nan
    peak_hooks_mib: float = math.nan
    serving_kib: float = math.nan
    serving_pct: float = math.nan
    #: the solved knobs of each embedding layer (CSV only), e.g. {"item_embedding": {"rank": 16}}
    knobs: str = ""


def min_budget(
    exc: ConfigError, base: DictConfig, data: PreparedData, method: str, budget: float
) -> float:
    """The smallest budget ``method`` reaches: the floor its solver's ``BudgetError`` carries (the
    largest of the model's tables), else a bisection between ``budget`` and 1 with the same
    builds."""
    if isinstance(exc, BudgetError):
        return exc.floor
    lo, hi = budget, 1.0
    while hi / lo > 1.001:
        mid = (lo * hi) ** 0.5
        try:
            build(base, data, method, mid)
            hi = mid
        except ConfigError:
            lo = mid
    return hi


def leaderboard_config(batch_size: int, dataset: str | None = None) -> DictConfig:
    """The composed config of a leaderboard run (GMF, full; composed once: Hydra takes ~0.5 s)."""
    extra = (EXPERIMENT, *([f"dataset={dataset}"] if dataset else []))
    return compose("gmf", "full", batch_size, False, "cpu", extra)


def method_config(base: DictConfig, method: str, budget: float | None) -> DictConfig:
    """``base`` with ``method=<method> method.budget=<budget>`` as Hydra would compose it: the
    method group's YAML is a plain node under ``method`` (its only interpolation, ``hash_seed:
    ${oc.select:seed,0}``, resolves against the root as in a run; the test compares with Hydra)."""
    cfg = base.copy()
    node = OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml")
    if budget is not None:
        node.budget = budget
    with open_dict(cfg):
        cfg.method = node
    return cfg


def build(base: DictConfig, data: PreparedData, method: str, budget: float | None) -> Case:
    """The case a leaderboard run of ``method`` at ``budget`` builds (full: no budget); the
    budget is solved per table by ``recbench.assembly.build_model`` as in the run."""
    return case_from_config(data, method_config(base, method, budget))


def current_rss_mib() -> float:
    """Resident memory now (``VmRSS``), MiB; nan where /proc is missing."""
    return _proc_status_mib("VmRSS")


def _proc_status_mib(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return math.nan


def run_hooks(case: Case, epochs: int) -> list[float]:
    """Seconds of every epoch's end-of-epoch hooks, as ``fit`` calls them (the optimizer state of
    replaced parameters dropped), for epochs 1..``epochs``."""
    seconds = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        for layer in embedding_layers(case.model).values():
            case.optimizer.forget(layer.on_epoch_end(epoch))
        seconds.append(time.perf_counter() - started)
    return seconds


def prepare_parent(base: DictConfig, data: PreparedData, methods: list[str], args) -> None:  # noqa: ANN001
    """Before forking: import every method's module and run one full case through steps,
    evaluation and hooks, then free it and hand free heap pages back to the system
    (``malloc_trim``), so that a child's RSS growth is its own case's memory, not the one-time
    imports and lazy initialisation of torch (~100 MiB) nor pages it reuses from the parent."""
    import gc
    import importlib

    for method in methods:
        target = str(OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml")._target_)
        importlib.import_module(target.rpartition(".")[0])
    run_case_once(build(base, data, "full", None), args)
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the children may then reuse a few free pages
        pass


PHASES = ("train", "eval", "hooks")


def run_case_once(case: Case, args, phase_end: Callable[[str], None] = lambda _: None) -> None:  # noqa: ANN001
    """The phases whose memory ``peak_in_child`` captures: ``--warmup`` training steps (at least
    1), one evaluation, the hooks; ``phase_end(name)`` is called after each."""
    flush_denormals()
    stream = iter(case.parts.sampler.epoch(case.generator))
    case.model.train()
    for _ in range(max(args.warmup, 1)):
        train_step(case.model, next(stream), case.loss_fn, case.optimizer)
    phase_end("train")
    case.parts.evaluator.evaluate(case.model, "test")
    phase_end("eval")
    run_hooks(case, args.hook_epochs)
    phase_end("hooks")


def map_file_pages() -> None:
    """Map every file-backed page of this process that is already in memory
    (``MADV_POPULATE_READ``, Linux 5.14+): a forked child starts with none of the parent's file
    mappings (shared libraries) in its page tables and faults them in as its code runs (~30 MiB
    of torch's code for a GMF step), which would otherwise count as the case's memory."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    populate_read = 22
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields_ = line.split()
        if len(fields_) < 6 or not fields_[5].startswith("/") or "r" not in fields_[1]:
            continue
        start, end = (int(x, 16) for x in fields_[0].split("-"))
        libc.madvise(start, end - start, populate_read)  # failures (old kernel) leave it lazy


#: Seconds a forked memory child may take before it is killed (it normally takes a few).
CHILD_TIMEOUT_S = 300.0


def peak_in_child(
    base: DictConfig,
    data: PreparedData,
    method: str,
    budget: float | None,
    args,  # noqa: ANN001
) -> dict[str, float]:
    """Peak RSS growth (MiB) of each phase (``PHASES``) of a forked child that builds the case
    (counted in "train"), trains ``args.warmup`` steps, evaluates once and runs the hooks: the
    phase's ``VmHWM`` (reset at each phase's start by writing 5 to ``/proc/self/clear_refs``;
    at fork it is the parent's peak) minus the child's ``VmRSS`` before building, after
    ``map_file_pages``. Empty without fork or /proc, or when the child fails (an unreachable
    budget)."""
    if not hasattr(os, "fork") or not Path("/proc/self/clear_refs").exists():
        return {}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running the parent's cleanup
        result: dict[str, float] = {}
        try:
            os.close(read)
            map_file_pages()  # the parent's code pages, which a child maps lazily, as they are used
            reset = Path("/proc/self/clear_refs")
            reset.write_text("5")  # the peak restarts at the current RSS
            before = current_rss_mib()

            def phase_end(name: str) -> None:
                result[name] = _proc_status_mib("VmHWM") - before
                reset.write_text("5")

            run_case_once(build(base, data, method, budget), args, phase_end)
        finally:
            os.write(write, json.dumps(result).encode())
            os._exit(0)
    os.close(write)
    # A fork of a process whose OpenMP pool or other threads held a lock can hang in the child
    # (e.g. inside a test runner that ran threaded code before): give up after ``CHILD_TIMEOUT_S``
    # and report no memory figures rather than hang the benchmark.
    ready, _, _ = select.select([read], [], [], CHILD_TIMEOUT_S)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        print(f"warning: the memory child for {method} hung; no peak RSS figures", file=sys.stderr)
        return {}
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else {}


def measure(
    base: DictConfig,
    data: PreparedData,
    budget: float,
    methods: list[str],
    peaks: dict[tuple[float, str], dict[str, float]],
    args,  # noqa: ANN001
) -> list[Row]:
    """Every method's row at ``budget``, full first (ratios are to it); ``peaks``: the forked
    children's peak RSS growth by (budget, method)."""
    rows, cases = [], []
    for method in ["full", *methods]:
        row = Row(budget=budget, method=method)
        solved = None if method == "full" else budget
        try:
            case = build(base, data, method, solved)
        except ConfigError as exc:
            smallest = min_budget(exc, base, data, method, budget)
            row.status = f"{UNREACHABLE} (min {smallest:.4g})"
            rows.append(row)
            continue
        for phase in PHASES:
            setattr(row, f"peak_{phase}_mib", peaks.get((budget, method), {}).get(phase, math.nan))
        rows.append(row)
        cases.append((row, case))
    flush_denormals()  # as fit() does
    streams = {}
    for row, case in cases:

        def endless(case: Case = case):  # noqa: ANN202 - the sampler's epochs, one after another
            while True:
                yield from case.parts.sampler.epoch(case.generator)

        streams[row.method] = endless()
        case.model.train()
        for _ in range(args.warmup):
            train_step(case.model, next(streams[row.method]), case.loss_fn, case.optimizer)
    steps: dict[str, list[float]] = {row.method: [] for row, _ in cases}
    evals: dict[str, list[float]] = {row.method: [] for row, _ in cases}
    for round_ in range(args.rounds):
        order = cases if round_ % 2 == 0 else cases[::-1]
        for row, case in order:
            batches = [next(streams[row.method]) for _ in range(args.steps)]
            sync(case.device)
            started = time.perf_counter()
            total = torch.zeros((), device=case.device)
            for batch in batches:
                total += train_step(case.model, batch, case.loss_fn, case.optimizer)
            float(total)
            steps[row.method].append((time.perf_counter() - started) / args.steps)
            started = time.perf_counter()
            case.parts.evaluator.evaluate(case.model, "test")  # leaves the model in train mode
            sync(case.device)
            evals[row.method].append(time.perf_counter() - started)
    full_row, full_case = cases[0]
    full_bits = model_size(full_case.model).serving_bits
    for row, case in cases:
        row.state_kib = training_state_bytes(case) / 1024  # before the hooks drop Adam state
        hooks = run_hooks(case, args.hook_epochs)
        row.step_ms = 1e3 * statistics.median(steps[row.method])
        row.eval_ms = 1e3 * statistics.median(evals[row.method])
        row.step_ratio = statistics.median(a / b for a, b in zip(steps[row.method], steps["full"]))
        row.eval_ratio = statistics.median(a / b for a, b in zip(evals[row.method], evals["full"]))
        row.hooks_ms, row.hook_max_ms, row.hook_epochs = (
            1e3 * sum(hooks),
            1e3 * max(hooks),
            len(hooks),
        )
        row.steps_per_epoch = len(case.parts.sampler)
        per_step = sum(hooks) / (len(hooks) * row.steps_per_epoch)
        row.step_hooks_ratio = (  # per round, as step_ratio; full has no hooks (exactly 1)
            statistics.median((a + per_step) / b for a, b in zip(steps[row.method], steps["full"]))
            if row is not full_row
            else 1.0
        )
        row.knobs = json.dumps(
            {name: layer.knobs() for name, layer in embedding_layers(case.model).items()},
            default=str,
        )
        bits = model_size(case.model).serving_bits
        row.serving_kib, row.serving_pct = bits / 8 / 1024, 100 * bits / full_bits
    return rows


def training_state_bytes(case: Case) -> int:
    """Bytes of the tensors a model holds between steps while training: parameters, buffers
    (caches, masks, initial copies) and the optimizer's state (Adam's two moments); exact, and
    independent of the machine's load or the allocator."""
    tensors = [*case.model.parameters(), *case.model.buffers()]
    for opt in case.optimizer.optimizers:
        tensors += [v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def markdown(rows: list[Row], hook_epochs: int) -> str:
    """The rows as the Markdown table of docs/performance.md."""
    lines = [
        f"| budget | method | step ms | step x full | eval ms | eval x full | hooks ms / {hook_epochs} "
        "epochs (max) | step+hooks x full | train state KiB | peak RSS MiB train / eval | serving KiB "
        "| % of full |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.budget:g} | {r.method} | {r.status} |" + " |" * 10)
            continue
        lines.append(
            f"| {r.budget:g} | {r.method} | {r.step_ms:.2f} | {r.step_ratio:.2f} | {r.eval_ms:.1f} "
            f"| {r.eval_ratio:.2f} | {r.hooks_ms:.1f} ({r.hook_max_ms:.1f}) | {r.step_hooks_ratio:.2f} "
            f"| {r.state_kib:,.0f} | {r.peak_train_mib:.1f} / {r.peak_eval_mib:.1f} | {r.serving_kib:,.1f} | {r.serving_pct:.1f} |"
        )
    return "\n".join(lines)


def load(base: DictConfig, args) -> PreparedData:  # noqa: ANN001
    """Synthetic ml-100k-sized ids, or the real dataset of ``base`` (its run's split)."""
    if args.dataset == "synthetic":
        inter = synthetic_sized(args.users, args.items, args.events, seed=0, name="bench-ml100k")
        return prepare(inter, "ranking", seed=0)
    from recbench.assembly import load_data

    return load_data(base)


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(b) for b in text.split(",")]
    except ValueError:
        budgets = []
    if not budgets or not all(0 < b < 1 for b in budgets):
        raise ValueError(text)
    return budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_method_cost.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--budgets", default="0.25,0.05",
                        help="comma list of method.budget values in (0, 1) (default 0.25,0.05)")  # fmt: skip
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma list of methods (default: the leaderboard's 14); full is always measured")  # fmt: skip
    parser.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="positives per step, each with the leaderboard's 4 negatives (its 512)",
    )
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed window")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating windows per case (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per case first")
    parser.add_argument("--hook-epochs", type=int, default=30,
                        help="epochs whose end-of-epoch hooks are run and amortised (the leaderboard's min_epochs)")  # fmt: skip
    parser.add_argument("--dataset", default="synthetic",
                        help="synthetic (ml-100k-sized ids) or a dataset config, e.g. ml-100k (needs RECBENCH_DATA)")  # fmt: skip
    parser.add_argument("--users", type=int, default=943, help="synthetic users")
    parser.add_argument("--items", type=int, default=1682, help="synthetic items")
    parser.add_argument("--events", type=int, default=100_000, help="synthetic events")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)"
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the forked peak-RSS measurement")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "method_cost.csv"))
    args = parser.parse_args(argv)
    try:
        budgets = parse_budgets(args.budgets)
    except ValueError:
        parser.error(
            f"--budgets={args.budgets!r} must be a comma list of numbers in (0, 1), e.g. 0.25,0.05"
        )
    methods = [m for m in args.methods.split(",") if m and m != "full"]
    unknown = [m for m in methods if not (ROOT / "conf" / "method" / f"{m}.yaml").is_file()]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from conf/method/*.yaml")
    for name in ("steps", "rounds", "hook_epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average "
          f"{load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}", flush=True)  # fmt: skip
    if (
        args.dataset != "synthetic"
        and not (ROOT / "conf" / "dataset" / f"{args.dataset}.yaml").is_file()
    ):
        parser.error(f"--dataset={args.dataset!r} is neither synthetic nor a file of conf/dataset/")
    base = leaderboard_config(
        args.batch_size, None if args.dataset == "synthetic" else args.dataset
    )
    try:
        data = load(base, args)
    except RecbenchError as exc:  # e.g. the dataset's files are not under RECBENCH_DATA
        parser.error(str(exc).splitlines()[0])
    rows: list[Row] = []
    started = time.perf_counter()
    peaks = {}  # forked before the parent builds any case, so none inherits another's pages
    if args.memory:
        prepare_parent(base, data, methods, args)
        for budget in budgets:
            for method in ["full", *methods]:
                solved = None if method == "full" else budget
                peaks[(budget, method)] = peak_in_child(base, data, method, solved, args)
    for budget in budgets:
        group = measure(base, data, budget, methods, peaks, args)
        print(markdown(group, args.hook_epochs), flush=True)
        rows.extend(group)
    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"\n{time.perf_counter() - started:.0f} s; load average at the end {load_avg[0]:.2f} "
          f"{load_avg[1]:.2f} {load_avg[2]:.2f}; {data.num_users} users x {data.num_items} items, "
          f"batch {args.batch_size}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
