"""``python -m recbench.run``: build data -> model -> train -> evaluate -> record.

One call trains one (dataset x backbone x compression method x size) combination; ``-m`` sweeps.
Everything a run writes goes to its Hydra folder under outputs/ (metrics.json, config.yaml, the
log; names and keys: ``recbench.record``) and, unless ``tracking=none``, to MLflow.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import recbench.config  # noqa: F401 - registers the schema with Hydra
from recbench import callbacks, provenance, record
from recbench.assembly import build, build_model, load_data, seed_everything
from recbench.checks import check_data_fit, check_run_config, preflight
from recbench.data.prepared import PreparedData
from recbench.embeddings.base import embedding_layers
from recbench.engine.contracts import RankingEvaluation
from recbench.engine.device import resolve_device
from recbench.engine.loop import FitOptions, fit
from recbench.errors import BudgetError, RecbenchError
from recbench.interrupts import Interrupted, as_interrupted, signals_deferred, signals_raise
from recbench.models.base import DataInfo, Recommender
from recbench.size import model_size, reference_bits
from recbench.tasks import TaskParts, build_task
from recbench.tracking import (
    StoreError,
    Tracker,
    Twin,
    cell_hash,
    config_hash,
    make_tracker,
    run_params,
)
from recbench.tuning import is_optuna_sweep, objective

log = logging.getLogger("recbench")


def parallel_launcher() -> bool:
    """True when this run is one of several running at once (a sweep under any launcher but
    Hydra's sequential ``basic`` one: joblib, submitit/SLURM): progress bars would interleave, so
    such runs show no bar and print one summary line each."""
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.runtime.choices.get("hydra/launcher") or "basic"
    return hydra_cfg.mode == RunMode.MULTIRUN and launcher != "basic"


def quiet_libraries() -> None:
    """MLflow and alembic log every schema check of the sqlite store at INFO ("Creating initial
    MLflow database tables...", "Context impl SQLiteImpl."); a run's console shows recbench's lines
    and the libraries' warnings only."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_identity(cfg: DictConfig) -> dict[str, str]:
    """Tags that identify a run (and let sweeps find finished twins), the code's identity included
    (``recbench.provenance``: version, git commit, dirty flag)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    user_method = choices.get("method@user_method") or choices.get("user_method")
    return {
        "dataset": str(cfg.dataset.name),
        "model": str(choices.get("model", cfg.model._target_.rsplit(".", 1)[-1])),
        "method": str(choices.get("method", cfg.method._target_.rsplit(".", 1)[-1])),
        "user_method": str(user_method or ""),
        "task": str(cfg.task),
        "seed": str(cfg.seed),
        "loss": str(cfg.train.loss),
        "preset": str(cfg.get("preset") or ""),
        "stage": str(cfg.get("stage") or "run"),
        "budget": "" if cfg.method.get("budget") is None else str(cfg.method.budget),
        "tie_break": str(cfg.dataset.get("tie_break", "file")),
        "config_hash": config_hash(resolved),
        "cell_hash": cell_hash(resolved),
        **provenance.current(),
    }


def run_name(cfg: DictConfig, identity: dict[str, str]) -> str:
    """``ml-100k-gmf-hashing-b0.25-s0-3f9a``: dataset, model, method (and the user method), the
    size (budget, or the method knobs set on the command line), seed and 4 random hex digits, so
    that runs of a budget sweep and ``force=true`` reruns never share a name in the MLflow UI."""
    parts = [identity["dataset"], identity["model"], identity["method"]]
    if identity.get("user_method"):
        parts.append(f"users_{identity['user_method']}")
    if identity.get("budget"):
        parts.append(f"b{identity['budget']}")
    elif HydraConfig.initialized():
        for override in HydraConfig.get().overrides.task:
            key, _, value = override.lstrip("+~").partition("=")
            plumbing = any(part in record.HYDRA_PLUMBING for part in key.split("."))
            if key.startswith(("method.", "user_method.")) and value and not plumbing:
                parts.append(f"{key.split('.', 1)[1]}{value}"[:24])
    parts += [f"s{cfg.seed}", secrets.token_hex(2)]
    return "-".join(parts)


def system_tags(identity: dict[str, str]) -> dict[str, str]:
    """MLflow's own tags (the UI's Source, User and Git commit columns) and, in a multirun, the
    ``sweep_id`` every run of the launch shares (``recbench.config.launch_id``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    tags = {
        "mlflow.source.name": "recbench.run",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": user,
    }
    if identity.get("git_commit"):
        tags["mlflow.source.git.commit"] = identity["git_commit"]
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        tags["sweep_id"] = recbench.config.launch_id()
    return tags


@dataclass
class Progress:
    """What a run has done so far, kept outside the training call so that a run stopped half-way
    (a signal, an error) still records its per-epoch history."""

    history: list[dict[str, Any]] = field(default_factory=list)


def execute(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one combination end to end; returns the metrics that were recorded.

    Order matters: every check that needs no data (config, output folder, tracking store) comes
    first, then the configuration is claimed in the store (``MlflowTracker.claim``: skipped when a
    twin FINISHED or is running), and only then is data loaded. Any end is recorded: FINISHED,
    FAILED (an exception) or KILLED (SIGTERM/SIGHUP/SIGINT, re-raised as ``Interrupted``)."""
    started = time.perf_counter()
    check_run_config(cfg)
    device = resolve_device(cfg.train.device)
    if not os.access(run_dir, os.W_OK):
        raise StoreError(
            f"the run folder {run_dir} is read-only; run from a writable folder or set hydra.run.dir"
        )
    identity = run_identity(cfg)
    quiet_libraries()
    tracker = make_tracker(
        cfg.tracking.enabled,
        cfg.tracking.uri,
        cfg.tracking.experiment or cfg.dataset.name,
        cfg.tracking.artifact_root,
    )
    tracker.open()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    any_code = cfg.get("resume", "same_code") == "any_code"
    progress = Progress()
    with signals_raise():
        try:
            twin = tracker.claim(
                run_name(cfg, identity),
                {**identity, **system_tags(identity), "run_dir": str(run_dir)},
                config_hash=identity["config_hash"],
                code_identity=None if any_code else identity["code_identity"],
                reuse_finished=any_code or provenance.reusable(identity),
                force=bool(cfg.get("force", False)),
            )
            if twin is not None:
                return _skip(twin, identity, run_dir)
            with tracker.heartbeat():
                tracker.log_params(run_params(resolved, identity))
                metrics = _train_and_evaluate(cfg, device, tracker, run_dir, started, progress)
        except BaseException as exc:
            interrupted = as_interrupted(exc)
            with signals_deferred():
                _record_end(cfg, exc, interrupted, identity, progress, tracker, run_dir)
            if interrupted is not None:
                raise interrupted from None
            raise
    tracker.finish("FINISHED")
    return metrics


def _skip(twin: Twin, identity: dict[str, str], run_dir: Path) -> dict[str, Any]:
    """Record in the run folder that a twin made this run unnecessary (no MLflow run is left)."""
    if twin.status == "FINISHED":
        log.info(
            "skipping: run %s (%s) already FINISHED with this configuration and code "
            "(config_hash %s); pass force=true to run it again",
            twin.run_id,
            twin.run_dir,
            identity["config_hash"],
        )
        note = f"recbench: skipped, identical run {twin.run_id} already FINISHED (force=true reruns it)"
    else:
        log.info(
            "skipping: run %s (%s) is training this configuration right now",
            twin.run_id,
            twin.run_dir,
        )
        note = f"recbench: skipped, identical run {twin.run_id} is RUNNING in another process ({twin.run_dir})"
    skipped = {"status": "SKIPPED", "same_as": twin.as_dict(), **identity}
    _write_json(run_dir / record.METRICS_FILE, skipped)
    print(note, flush=True)
    return {"status": "SKIPPED", **twin.metrics}


def _record_end(
    cfg: DictConfig,
    exc: BaseException,
    interrupted: Interrupted | None,
    identity: dict[str, str],
    progress: Progress,
    tracker: Tracker,
    run_dir: Path,
) -> None:
    """Write metrics.json (with the history so far) and end the MLflow run FAILED or KILLED. A
    budget the method cannot reach (``BudgetError``) is FAILED too, with its floor recorded
    (``record.BUDGET_FLOOR``: a key of metrics.json and an MLflow tag) for the report."""
    epochs = len(progress.history)
    if interrupted is not None:
        status = "KILLED"
        message = f"stopped by {interrupted.name} after {epochs} of {cfg.train.epochs} epochs"
        interrupted.detail = message
    else:
        status = "FAILED"
        message = str(exc) if isinstance(exc, RecbenchError) else f"{type(exc).__name__}: {exc}"
    floor = {record.BUDGET_FLOOR: exc.floor} if isinstance(exc, BudgetError) else {}
    payload = {
        "status": status, "error": message, **floor, **identity, "epochs_done": epochs,
        "history": progress.history,
    }  # fmt: skip
    try:
        _write_json(run_dir / record.METRICS_FILE, payload)
        (run_dir / record.CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as err:
        log.error("could not write %s: %s", run_dir / record.METRICS_FILE, err)
    try:
        if floor:
            tracker.set_tags({record.BUDGET_FLOOR: repr(exc.floor)})
        tracker.finish(status, error=message)
    except Exception as err:  # noqa: BLE001 - never hide the original error behind the store's
        log.error("could not record the run as %s in MLflow: %s", status, err)


def _train_and_evaluate(
    cfg: DictConfig,
    device: torch.device,
    tracker: Tracker,
    run_dir: Path,
    started: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    progress = progress if progress is not None else Progress()
    seed_everything(cfg.seed)
    data = load_data(cfg)
    check_data_fit(cfg, data)
    data_seconds = time.perf_counter() - started
    for note in data.notes:
        log.warning("%s", note)
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in data.summary().items()))
    _log_dataset(cfg, data, tracker)

    seed_everything(cfg.seed)
    model = build_model(cfg, data).to(device)
    reference_dim = int(cfg.eval.get("reference_dim", 64))
    size = model_size(
        model,
        reference_bits(build(cfg.model), DataInfo.from_prepared(data), reference_dim),
        reference_dim,
    )
    parts = build_task(data, cfg, device)
    layer_knobs = {
        name: {"class": type(layer).__name__, **layer.knobs()}
        for name, layer in embedding_layers(model).items()
    }
    tracker.set_tags(
        {**parts.tags, **{f"knobs.{n}": json.dumps(k, default=str) for n, k in layer_knobs.items()}}
    )
    log.info(
        "model %s with %s embeddings: %d serving bits (%.1f%% of the full model at d = %d)",
        type(model).__name__,
        cfg.method._target_.rsplit(".", 1)[-1],
        size.serving_bits,
        100 * size.fraction_of_full,
        reference_dim,
    )

    def validate() -> dict[str, float]:
        return parts.evaluator.evaluate(model, "valid")

    options = FitOptions(
        loss=cfg.train.loss,
        epochs=cfg.train.epochs,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        patience=cfg.train.patience,
        min_epochs=cfg.train.min_epochs,
        monitor=parts.monitor if parts.has_validation else None,
        seed=cfg.seed,
        progress=cfg.train.progress and not parallel_launcher(),
        sparse=cfg.train.sparse,
        compile=cfg.train.compile,
        fused_vq=cfg.train.get("fused_vq", "auto"),
    )
    result = fit(
        model,
        parts.sampler,
        options,
        validate=validate if parts.has_validation else None,
        on_epoch=lambda epoch, row: _on_epoch(tracker, progress, epoch, row),
    )

    # eval.test=false (tuning): the test split is neither evaluated nor recorded, nor is anything
    # that reads it (popularity on test, the serving artifact's reference scores).
    with_test = cfg.eval.get("test", True)
    metrics: dict[str, Any] = {}
    if with_test:
        eval_started = time.perf_counter()
        test = parts.evaluator.evaluate(model, "test")
        metrics["time/test_eval_seconds"] = time.perf_counter() - eval_started
        metrics.update({record.key(record.TEST, k): v for k, v in test.items()})
    if parts.has_validation:  # the restored best epoch; val/* stays the per-epoch curve
        best = parts.evaluator.evaluate(model, "valid")
        metrics.update({record.key(record.BEST, k): v for k, v in best.items()})
    ranking = isinstance(parts.evaluator, RankingEvaluation)  # rating tasks have no baseline
    if with_test and ranking and cfg.eval.popularity_baseline:
        popular = parts.evaluator.popularity(data.item_counts, "test")
        metrics.update({record.key(record.POPULARITY, k): v for k, v in popular.items()})
    # after training (CCE and PEP change their size), still against the full model at reference_dim
    metrics.update(model_size(model, size.full_bits, reference_dim).as_metrics())
    torch.save(model.state_dict(), run_dir / record.MODEL_FILE)
    if with_test and cfg.eval.serving_artifact:
        metrics.update(_export_serving(cfg, model, data, parts, run_dir, tracker))
    metrics.update(
        {
            "fit/best_epoch": result.best_epoch,
            "fit/epochs_run": result.epochs_run,
            "time/data_seconds": data_seconds,
            "time/train_seconds": result.train_seconds,
            "time/train_samples_per_second": result.samples_per_second,
            "time/total_seconds": time.perf_counter() - started,
        }
    )
    tracker.log_metrics(metrics)

    payload = {
        "status": "FINISHED",
        **run_identity(cfg),
        "data": data.summary(),
        "notes": data.notes,
        "knobs": layer_knobs,
        "tags": parts.tags,
        "metrics": metrics,
        "history": result.history,
    }
    _write_json(run_dir / record.METRICS_FILE, payload)
    (run_dir / record.CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker.log_artifact(run_dir / record.METRICS_FILE)
    tracker.log_artifact(run_dir / record.CONFIG_FILE)
    _print_summary(cfg, data, metrics, run_dir)
    return metrics


def _log_dataset(cfg: DictConfig, data: PreparedData, tracker: Tracker) -> None:
    """The prepared data as the run's input: digest = sha256 of the split's summary and of the
    dataset config that produced it (same data, same digest), source = the file or generator."""
    summary = data.summary()
    dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    payload = json.dumps({"summary": summary, "dataset": dataset_cfg}, sort_keys=True, default=str)
    target = str(cfg.dataset.get("loader", {}).get("_target_", ""))
    source = (
        f"{target}({cfg.dataset.name})"
        if target.endswith("synthetic.generate")
        else str(Path(cfg.dataset.root, cfg.dataset.name).absolute())
    )
    tracker.log_dataset(
        str(cfg.dataset.name), hashlib.sha256(payload.encode()).hexdigest(), source, summary
    )


def _on_epoch(tracker: Tracker, progress: Progress, epoch: int, row: dict[str, Any]) -> None:
    """Per epoch: log the metrics, refresh the heartbeat, keep the history for a stopped run."""
    progress.history.append({"epoch": epoch, **{k: v for k, v in row.items() if k != "epoch"}})
    tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
    tracker.beat()


def _export_serving(
    cfg: DictConfig,
    model: Recommender,
    data: PreparedData,
    parts: TaskParts,
    run_dir: Path,
    tracker: Tracker,
) -> dict[str, float]:
    """Write the serving artifact, check that it alone reproduces the scores, log it."""
    from recbench import serving

    folder = run_dir / serving.FOLDER
    started = time.perf_counter()
    report = serving.export(
        model,
        folder,
        model_config=OmegaConf.to_container(cfg.model, resolve=True),
        contexts=serving.sample_contexts(parts.evaluator, model),
        raw_ids=(data.users.raw, data.items.raw),
    )
    out = report.as_metrics()
    if (folder / serving.REFERENCE).is_file():
        out["serving/max_abs_score_diff"] = serving.verify(folder)
    out["time/serving_export_seconds"] = time.perf_counter() - started
    tracker.log_artifact(folder, "serving")
    return out


def _print_summary(
    cfg: DictConfig, data: PreparedData, metrics: dict[str, Any], run_dir: Path | None = None
) -> None:
    """The run's result at a glance: the model against the popularity baseline, its serving size
    and where the time went. A run of a parallel sweep prints one line (lines of concurrent runs
    would interleave)."""
    ident = run_identity(cfg)
    name = f"{ident['dataset']} / {ident['model']} / {ident['method']}" + (
        f" (users: {ident['user_method']})" if ident["user_method"] else ""
    )
    # a tuning trial (eval.test=false) has no test metrics: show its validation result instead
    keys = [k for k in metrics if record.parse_metric(k).prefix == record.TEST] or [
        k for k in metrics if record.parse_metric(k).prefix == record.BEST
    ]
    baseline = {
        k: metrics.get(record.key(record.POPULARITY, record.parse_metric(k).name)) for k in keys
    }
    has_baseline = all(v is not None for v in baseline.values()) and bool(keys)
    bits = int(metrics["size/serving_bits"])
    fraction = 100 * metrics["size/fraction_of_full"]
    epochs_run, best = int(metrics["fit/epochs_run"]), int(metrics["fit/best_epoch"])
    head = keys[0] if keys else None
    if parallel_launcher():
        result = f"{record.metric_label(head)} {metrics[head]:.4f}" if head else "no test metric"
        if head and has_baseline:
            result += f" (popularity {baseline[head]:.4f})"
        print(
            f"recbench: {name} / seed {cfg.seed}: {result}, {fraction:.1f}% of full, "
            f"{epochs_run} epochs, {metrics['time/total_seconds']:.1f}s -> {run_dir or ''}",
            flush=True,
        )
        return
    width = max([10, *(len(record.metric_label(k)) + 2 for k in keys)])
    model_row = (
        "model" if head and record.parse_metric(head).prefix == record.TEST else "model (val)"
    )
    lines = [
        f"recbench: {name} / seed {cfg.seed}: {data.num_users:,} users, {data.num_items:,} items, "
        f"task {data.task}",
        "  " + " " * 12 + "".join(f"{record.metric_label(k):>{width}}" for k in keys),
        "  " + f"{model_row:<12}" + "".join(f"{metrics[k]:>{width}.4f}" for k in keys),
    ]
    if has_baseline:
        lines.append(
            "  " + f"{'popularity':<12}" + "".join(f"{baseline[k]:>{width}.4f}" for k in keys)
        )
        model_value, pop_value = metrics[head], baseline[head]
        ratio = f"{model_value / pop_value:.1f}x" if pop_value > 0 else "n/a"
        verdict = "beats" if model_value > pop_value else "does NOT beat"
        lines.append(
            f"  -> the model {verdict} the popularity baseline: {record.metric_label(head)} "
            f"{model_value:.4f} vs {pop_value:.4f} ({ratio})"
            + ("" if model_value > pop_value else "; train longer or tune train.lr / train.epochs")
        )
    stop = (
        f", stopped early after {epochs_run} (patience {cfg.train.patience})"
        if epochs_run < cfg.train.epochs
        else f" of {epochs_run}"
    )
    lines += [
        f"  size        {bits:,} serving bits ({bits / 8 / 2**20:.3f} MiB), "
        f"{fraction:.1f}% of the full float32 model at d = {cfg.eval.get('reference_dim', 64)}",
        f"  time        {metrics['time/total_seconds']:.1f}s in all: train "
        f"{metrics['time/train_seconds']:.1f}s ({metrics['time/train_samples_per_second']:,.0f} "
        f"samples/s), best epoch {best}{stop}"
        + (
            f"; test eval {metrics['time/test_eval_seconds']:.2f}s"
            if "time/test_eval_seconds" in metrics
            else ""
        ),
    ]
    if run_dir is not None:
        saved = f"{record.METRICS_FILE}, {record.CONFIG_FILE}, serving/"
        lines.append(f"  saved       {run_dir}/ ({saved})")
    print("\n".join(lines), flush=True)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float | None:
    """Hydra entry point. User errors print one line and exit non-zero; in a sweep a failed run is
    recorded (FAILED in MLflow, metrics.json with the error) and the sweep goes on. A signal
    (SIGTERM/SIGHUP/SIGINT) records the run KILLED, prints one line and exits 128 + signal number,
    in a sweep too (the launcher is being stopped)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = execute(cfg, run_dir)
        # Hydra's Optuna sweeper needs one float: the run's (best-epoch) validation metric.
        return objective(cfg, metrics) if multirun and is_optuna_sweep(hydra_cfg) else metrics
    except Interrupted as exc:
        detail = getattr(exc, "detail", str(exc))
        print(
            f"recbench: {detail}; recorded KILLED "
            f"(history so far in {run_dir / record.METRICS_FILE}); "
            "rerun the same command to train it",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("recbench: stopped by SIGINT before the run started", file=sys.stderr, flush=True)
        sys.exit(130)
    except RecbenchError as exc:
        print(f"recbench: error: {exc}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(exc.exit_code)
        return {"status": "FAILED", "error": str(exc)}
    except Exception as exc:
        if not multirun:
            raise
        (run_dir / record.TRACEBACK_FILE).write_text(traceback.format_exc())
        print(
            f"recbench: run failed: {type(exc).__name__}: {exc} (traceback in {run_dir})",
            file=sys.stderr,
        )
        return {"status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}


def cli() -> None:
    """Check the command line's configuration and destinations first (one-line errors, exit 2),
    then hand over to Hydra. A sweep in which any run FAILED or left no record exits 1."""
    argv = sys.argv[1:]
    recbench.config.new_launch()
    try:
        if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in argv):
            problem = preflight(argv, destinations=True)
            if problem:
                print(f"recbench: error: {problem}", file=sys.stderr)
                sys.exit(2)
        main()
    except KeyboardInterrupt:
        print("recbench: stopped by SIGINT", file=sys.stderr, flush=True)
        sys.exit(130)
    if callbacks.LAST_SWEEP.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    cli()
