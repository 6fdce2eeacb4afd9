#!/usr/bin/env python
"""Time to quality: the wall time until a model of a given validation NDCG@10 exists.

Why: a fast step does not help a user whose defaults need many epochs, and a cheap epoch does not
help if it learns less. This script trains several *variants* (recbench configurations, or an
external library's model through ``--external``) side by side in one process, in round-robin
epochs (variant A epoch 1, variant B epoch 1, A epoch 2, ...) so that they share the machine's
state, each with early stopping on the validation metric. Per variant it records after every epoch
the training seconds, the validation seconds and the validation NDCG@K, and reports:

* ``time_to_target_s``: wall seconds (training + validation, the time a user waits) until the
  first epoch whose validation NDCG@K reaches the target; the target is ``--fraction`` (default
  0.95) of ``--reference`` (a number) or, by default, of the best validation NDCG@K the
  ``--reference-variant`` (default: the first variant) reaches in this run;
* ``best``: the best validation NDCG@K, its epoch and the epochs run; ``epoch_s``: the mean
  training seconds of an epoch; ``train_to_target_s`` (``train s``): the training seconds alone.

Examples::

    python scripts/bench_time_to_quality.py --common "dataset=ml-100k model=gmf" \\
        --variant "full=method=full" --variant "dpq=method=dpq" --max-epochs 30
    python scripts/bench_time_to_quality.py --common "dataset=amazon-games model=sasrec" \\
        --variant "bce=train.loss=bce" --variant "ce=train.loss=ce" \\
        --variant "ss1000=train.loss=sampled_softmax train.num_sampled=1000" \\
        --reference-variant ce --max-epochs 5

External libraries (not dependencies): ``--external NAME=module:function`` adds a variant trained
by ``function(data, k=..., seed=...)``, which receives recbench's ``PreparedData`` (the identical
split) and must return an iterator that trains one epoch per ``next()`` and yields
``(train_seconds, valid_seconds, valid_ndcg_at_k)``. When the module cannot be imported the
variant is reported as not measured (the run goes on). ``scripts/ext_recbole.py`` is such an
adapter for RecBole's GMF (``make bench-ttq-recbole`` installs RecBole into ``.venv-ext`` and runs
recbench's GMF against it with ``--reference-variant recbole --fraction 1``: the time each needs to
reach RecBole's best validation NDCG@10). Results: a table on the terminal (``x ref``: a
variant's time to target over the reference variant's) and CSVs (``--out``: the summary;
``<out>.history.csv``: every epoch of every variant, rewritten after each epoch); ``--from-history <out>.history.csv``
summarises a finished (or interrupted) run again for another reference or fraction without training
(several history files are read as one run: variants trained in parallel processes).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbench.errors import ConfigError  # noqa: E402


@dataclass
class Epoch:
    """One epoch of one variant."""

    epoch: int
    train_s: float
    valid_s: float
    value: float


@dataclass
class Variant:
    """A named trainer: ``step()`` trains one epoch and validates, returning an ``Epoch``."""

    name: str
    step: Callable[[int], Epoch] | None
    note: str = ""
    history: list[Epoch] = field(default_factory=list)
    stopped: str = ""


@dataclass
class Summary:
    name: str
    target: float
    time_to_target_s: float | None
    epochs_to_target: int | None
    best: float
    best_epoch: int
    epochs_run: int
    epoch_s: float
    total_s: float
    x_reference: float | None = None  # time_to_target_s / the reference variant's
    train_to_target_s: float | None = None  # the training seconds alone in time_to_target_s
    note: str = ""


def time_to_target(history: list[Epoch], target: float) -> tuple[float | None, int | None]:
    """Cumulative wall seconds (training + validation) and epochs until the first epoch whose
    validation value reaches ``target``; (None, None) if none does."""
    elapsed = 0.0
    for row in history:
        elapsed += row.train_s + row.valid_s
        if row.value >= target:
            return elapsed, row.epoch
    return None, None


def summarise(
    variants: list[Variant], target: float, reference_name: str | None = None
) -> list[Summary]:
    """One row per variant; ``x_reference`` divides each time to target by ``reference_name``'s."""
    rows = []
    for v in variants:
        seconds, epochs = time_to_target(v.history, target)
        train_s = sum(e.train_s for e in v.history[: epochs or 0]) if epochs is not None else None
        best = max(v.history, key=lambda e: e.value, default=None)
        rows.append(
            Summary(
                name=v.name, target=target, time_to_target_s=seconds, epochs_to_target=epochs,
                best=best.value if best else math.nan, best_epoch=best.epoch if best else 0,
                epochs_run=len(v.history),
                epoch_s=sum(e.train_s for e in v.history) / len(v.history) if v.history else math.nan,
                total_s=sum(e.train_s + e.valid_s for e in v.history),
                note="; ".join(x for x in (v.note, v.stopped) if x), train_to_target_s=train_s,
            )
        )  # fmt: skip
    ref = next((r for r in rows if r.name == reference_name), None)
    if ref is not None and ref.time_to_target_s:
        for r in rows:
            if r.time_to_target_s is not None:
                r.x_reference = r.time_to_target_s / ref.time_to_target_s
    return rows


def write_history(variants: list[Variant], path: Path) -> None:
    """Every epoch of every variant so far, as ``--from-history`` reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "epoch", "train_s", "valid_s", "value"])
        for v in variants:
            for e in v.history:
                writer.writerow([v.name, e.epoch, e.train_s, e.valid_s, e.value])
    tmp.replace(path)


def run_round_robin(
    variants: list[Variant],
    max_epochs: int,
    patience: int,
    time_budget: float | None,
    history_path: Path | None = None,
) -> None:
    """Train the variants one epoch each in turn until each stops (``patience`` epochs without a
    better validation value, ``max_epochs``, or ``time_budget`` seconds of its own wall time).

    With ``history_path`` the history is rewritten after every epoch, so that an interrupted long
    run (hours for a full softmax over a large catalogue) keeps what it measured."""
    for epoch in range(1, max_epochs + 1):
        active = [v for v in variants if v.step is not None and not v.stopped]
        if not active:
            return
        for v in active:
            row = v.step(epoch)
            v.history.append(row)
            print(f"  {v.name:16} epoch {epoch:3d}  train {row.train_s:7.2f}s  valid {row.valid_s:6.2f}s  "
                  f"ndcg {row.value:.4f}", flush=True)  # fmt: skip
            best = max(v.history, key=lambda e: e.value)
            if patience and epoch - best.epoch >= patience:
                v.stopped = f"early stop at epoch {epoch}"
            elif (
                time_budget is not None
                and sum(e.train_s + e.valid_s for e in v.history) >= time_budget
            ):
                v.stopped = f"time budget after epoch {epoch}"
            if history_path is not None:
                write_history(variants, history_path)
    for v in variants:
        if v.step is not None and not v.stopped:
            v.stopped = f"max epochs ({max_epochs})"


# ------------------------------------------------------------------------------- recbench variants
def compose_config(overrides: list[str]) -> Any:
    """The run's configuration as ``python -m recbench.run`` composes it (tracking off)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import recbench.config  # noqa: F401 - registers the structured schema

    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(
                "config", overrides=[*overrides, "tracking=none", "train.progress=false"]
            )
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"overrides {' '.join(overrides)!r}: {first}") from None


def recbench_variant(name: str, overrides: list[str], data_cache: dict[str, Any]) -> Variant:
    """A variant trained by recbench's own loop (``train_step`` with the run's optimizer, loss and
    sampler, exactly as ``fit`` does), validated by the run's evaluator."""
    from recbench.assembly import build_model, load_data, seed_everything
    from recbench.checks import check_run_config
    from recbench.engine.device import flush_denormals, resolve_device
    from recbench.engine.loop import train_step
    from recbench.engine.losses import loss_function
    from recbench.engine.optim import make_optimizer
    from recbench.tasks import build_task

    cfg = compose_config(overrides)
    check_run_config(cfg)
    key = (
        repr(sorted((str(k), str(v)) for k, v in cfg.dataset.items()))
        + str(cfg.task)
        + str(cfg.seed)
    )
    if key not in data_cache:
        seed_everything(cfg.seed)
        data_cache[key] = load_data(cfg)
    data = data_cache[key]
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)
    model = build_model(cfg, data).to(device)
    parts = build_task(data, cfg, device)
    loss_fn = loss_function(cfg.train.loss, cfg.train.compile)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.sparse)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    monitor = parts.monitor
    flush_denormals()

    def step(epoch: int) -> Epoch:
        model.train()
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for batch in parts.sampler.epoch(generator):
            total += train_step(model, batch, loss_fn, optimizer)
        float(total)  # wait for the device
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        value = parts.evaluator.evaluate(model, "valid")[monitor]
        return Epoch(epoch, train_s, time.perf_counter() - started, float(value))

    return Variant(name, step, note=f"batch {cfg.train.batch_size}, loss {cfg.train.loss}")


def external_variant(name: str, spec: str, data: Any, k: int, seed: int) -> Variant:
    """A variant trained by an external library's adapter ``module:function`` (see the module
    docstring); not measured (with the reason) when the module cannot be imported."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return Variant(
            name, None, note=f"not measured: {module_name} is not installed ({exc.name})"
        )
    function = getattr(module, function_name or "train_epochs")
    epochs: Iterator[tuple[float, float, float]] = iter(function(data, k=k, seed=seed))

    def step(epoch: int) -> Epoch:
        train_s, valid_s, value = next(epochs)
        return Epoch(epoch, float(train_s), float(valid_s), float(value))

    return Variant(name, step, note=f"external {spec}")


def parse_named(values: list[str], what: str) -> list[tuple[str, str]]:
    """``NAME=rest`` pairs; a variant's rest is Hydra overrides, an external's ``module:function``."""
    out = []
    example = (
        "--variant 'dpq=method=dpq train.lr=0.002'"
        if what == "--variant"
        else "--external 'lib=my_adapter:train'"
    )
    for value in values:
        name, sep, rest = value.partition("=")
        malformed = (rest and "=" not in rest) if what == "--variant" else ":" not in rest
        if not sep or not name or "." in name or " " in name or malformed:
            raise ConfigError(f"{what}={value!r} must be NAME=..., e.g. {example}")
        out.append((name, rest))
    return out


def read_history(path: Path) -> list[Variant]:
    """The variants of a previous run, from its ``<out>.history.csv`` (in the file's order)."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        variants: dict[str, Variant] = {}
        for row in rows:
            v = variants.setdefault(row["variant"], Variant(row["variant"], None))
            v.history.append(
                Epoch(
                    int(row["epoch"]),
                    float(row["train_s"]),
                    float(row["valid_s"]),
                    float(row["value"]),
                )
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"--from-history={path}: not a history CSV of this script ({exc}); "
                          "pass the <out>.history.csv a run wrote") from None  # fmt: skip
    if not variants:
        raise ConfigError(
            f"--from-history={path} has no epochs; pass the <out>.history.csv a run wrote"
        )
    return list(variants.values())


def plot_curves(variants: list[Variant], target: float, path: Path) -> None:
    """Validation NDCG@K of every variant against the wall seconds (training + validation) it
    has spent, with the target as a line: the trade-off a user faces, not just the end points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for v in variants:
        seconds, spent = [], 0.0
        for e in v.history:
            spent += e.train_s + e.valid_s
            seconds.append(spent / 60)
        ax.plot(seconds, [e.value for e in v.history], marker=".", label=v.name)
    if math.isfinite(target):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("wall minutes (training + validation after every epoch, log scale)")
    ax.set_ylabel("validation NDCG (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def print_table(rows: list[Summary]) -> None:
    head = (f"{'variant':16} {'target':>7} {'to target (s)':>13} {'train s':>7} {'epochs':>6} {'best':>7} "
            f"{'at ep':>5} {'ran':>4} {'epoch_s':>8} {'total_s':>8} {'x ref':>6}  note")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        reached = (
            f"{r.time_to_target_s:13.1f}"
            if r.time_to_target_s is not None
            else f"{'not reached':>13}"
        )
        epochs = f"{r.epochs_to_target:6d}" if r.epochs_to_target is not None else f"{'-':>6}"
        train = f"{r.train_to_target_s:7.1f}" if r.train_to_target_s is not None else f"{'-':>7}"
        ratio = f"{r.x_reference:6.3f}" if r.x_reference is not None else f"{'-':>6}"
        print(f"{r.name:16} {r.target:7.4f} {reached} {train} {epochs} {r.best:7.4f} {r.best_epoch:5d} "
              f"{r.epochs_run:4d} {r.epoch_s:8.2f} {r.total_s:8.1f} {ratio}  {r.note}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--common", default="dataset=ml-100k model=gmf",
                        help="Hydra overrides shared by every variant (quoted, space-separated)")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=OVERRIDES, repeatable (default: full=method=full)")  # fmt: skip
    parser.add_argument("--external", action="append", default=[],
                        help="NAME=module:function, an external library's adapter (see above)")  # fmt: skip
    parser.add_argument("--reference", type=float, default=None, help="reference validation NDCG@K")
    parser.add_argument("--reference-variant", default=None,
                        help="variant whose best validation NDCG@K is the reference (default: the first)")  # fmt: skip
    parser.add_argument(
        "--fraction", type=float, default=0.95, help="target = fraction x reference"
    )
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5, help="early stopping (0 = off)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "time_to_quality.csv"))
    parser.add_argument("--from-history", default=None, metavar="CSV", nargs="+",
                        help="summarise a previous run's <out>.history.csv for another --reference-variant, "
                        "--reference or --fraction (no training, nothing written); several files are "
                        "read as one run (e.g. variants trained in parallel processes)")  # fmt: skip
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw validation NDCG@K against wall time per variant (with --from-history too)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if not 0 < args.fraction <= 1:
            raise ConfigError(f"--fraction={args.fraction} must be in (0, 1], e.g. 0.95")
        if args.max_epochs < 1:
            raise ConfigError(f"--max-epochs={args.max_epochs} must be >= 1")
        if args.from_history:
            variants = [v for path in args.from_history for v in read_history(Path(path))]
            names = [v.name for v in variants]
        else:
            variants_spec = parse_named(args.variant or ["full=method=full"], "--variant")
            externals = parse_named(args.external, "--external")
            names = [n for n, _ in variants_spec + externals]
        if len(set(names)) != len(names):
            raise ConfigError(f"variant names must be distinct: {names}")
        reference_name = args.reference_variant or names[0]
        if args.reference is None and reference_name not in names:
            raise ConfigError(f"--reference-variant={reference_name} is not one of {names}")
        if not args.from_history:
            if args.threads:
                torch.set_num_threads(args.threads)
            common = shlex.split(args.common)
            cache: dict[str, Any] = {}
            variants = [
                recbench_variant(n, common + shlex.split(o), cache) for n, o in variants_spec
            ]
    except ConfigError as exc:
        print(f"recbench: error: {exc}", file=sys.stderr)
        return 2
    if not args.from_history:
        if externals:
            data = next(iter(cache.values()))
            cfg = compose_config(common)
            variants += [
                external_variant(n, s, data, int(cfg.eval.k), int(cfg.seed)) for n, s in externals
            ]
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {args.common}; "
              f"variants {', '.join(names)}", flush=True)  # fmt: skip
        history_path = Path(args.out).with_suffix(".history.csv")
        run_round_robin(variants, args.max_epochs, args.patience, args.time_budget, history_path)
    if args.reference is not None:
        reference = args.reference
    else:
        ref = next(v for v in variants if v.name == reference_name)
        reference = max((e.value for e in ref.history), default=math.nan)
    target = args.fraction * reference
    rows = summarise(variants, target, reference_name)
    print(f"\ntarget: {args.fraction:g} x {reference:.4f} = {target:.4f} validation NDCG "
          f"(reference: {args.reference if args.reference is not None else reference_name})")  # fmt: skip
    print_table(rows)
    if args.plot:
        plot_curves(variants, target, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.from_history:
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(Summary.__dataclass_fields__))
        for r in rows:
            writer.writerow([getattr(r, f) for f in Summary.__dataclass_fields__])
    write_history(variants, out.with_suffix(".history.csv"))
    print(f"\nwrote {out} and {out.with_suffix('.history.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
