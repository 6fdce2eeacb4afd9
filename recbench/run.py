"""``python -m recbench.run``: build data -> model -> train -> evaluate -> record.

One call trains one (dataset x backbone x compression method x size) combination; ``-m`` sweeps.
Everything a run writes goes to its Hydra folder under outputs/ (metrics.json, config.yaml, the
log) and, unless ``tracking=none``, to MLflow.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import recbench.config  # noqa: F401 - registers the schema with Hydra
from recbench.checks import check_run_config, preflight
from recbench.data.prepared import PreparedData, prepare
from recbench.embeddings.base import BudgetedFactory, EmbeddingFactory, embedding_layers
from recbench.errors import RecbenchError
from recbench.models.base import DataInfo, Recommender
from recbench.size import model_size
from recbench.tasks import build_task
from recbench.tracking import config_hash, flatten, make_tracker
from recbench.training import fit, resolve_device
from recbench.tuning import is_optuna_sweep, objective

log = logging.getLogger("recbench")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a RecbenchError raised inside the target surfaces as itself
    (Hydra wraps it in an InstantiationException whose message is several lines long)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, RecbenchError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def load_data(cfg: DictConfig) -> PreparedData:
    """Load the dataset named by the config and prepare it for the run's task and seed."""
    inter = build(cfg.dataset.loader)
    ds = cfg.dataset
    return prepare(
        inter,
        cfg.task,
        seed=cfg.seed,
        rating_split=tuple(ds.rating_split),
        rating_range=None if ds.rating_range is None else tuple(ds.rating_range),
        min_user_count=ds.min_user_count,
        min_item_count=ds.min_item_count,
    )


def method_factory(node: DictConfig) -> EmbeddingFactory:
    """The embedding factory a method node describes; with ``budget`` set, its size knob is solved
    per layer (``CompressedEmbedding.solve_budget``) instead of read from the YAML."""
    knobs = OmegaConf.to_container(node, resolve=True)
    budget = knobs.pop("budget", None)
    factory = build(knobs)
    return factory if budget is None else BudgetedFactory(factory, float(budget))


def build_model(cfg: DictConfig, data: PreparedData) -> Recommender:
    """The backbone with its embedding layers built by the method factories."""
    item_factory = method_factory(cfg.method)
    user_factory = None
    if cfg.get("user_method") is not None:
        user_factory = method_factory(cfg.user_method)
    model_factory = build(cfg.model)
    return model_factory(
        DataInfo.from_prepared(data), item_embedding=item_factory, user_embedding=user_factory
    )


def run_identity(cfg: DictConfig) -> dict[str, str]:
    """Tags that identify a run (and let sweeps find finished twins)."""
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
        "config_hash": config_hash(resolved),
    }


def execute(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one combination end to end; returns the metrics that were recorded."""
    started = time.perf_counter()
    check_run_config(cfg)
    device = resolve_device(cfg.train.device)
    identity = run_identity(cfg)
    tracker = make_tracker(
        cfg.tracking.enabled,
        cfg.tracking.uri,
        cfg.tracking.experiment or cfg.dataset.name,
        cfg.tracking.artifact_root,
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not cfg.get("force", False):
        done = tracker.find_finished(identity["config_hash"])
        if done is not None:
            log.info(
                "skipping: run %s (%s) already FINISHED with this configuration (config_hash %s); "
                "pass force=true to run it again", done["run_id"], done["run_dir"],
                identity["config_hash"],
            )
            _write_json(run_dir / "metrics.json", {"status": "SKIPPED", "same_as": done, **identity})
            print(f"recbench: skipped, identical run {done['run_id']} already FINISHED (force=true reruns it)")
            return {"status": "SKIPPED", **done["metrics"]}
    run_name = f"{identity['model']}-{identity['method']}-s{cfg.seed}"
    try:
        tracker.start(run_name, {**identity, "run_dir": str(run_dir)}, flatten(resolved))
        metrics = _train_and_evaluate(cfg, device, tracker, run_dir, started)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        message = str(exc) if isinstance(exc, RecbenchError) else f"{type(exc).__name__}: {exc}"
        _write_json(run_dir / "metrics.json", {"status": status, "error": message, **identity})
        tracker.finish(status, error=message)
        raise
    tracker.finish("FINISHED")
    return metrics


def _train_and_evaluate(
    cfg: DictConfig, device: torch.device, tracker: Any, run_dir: Path, started: float
) -> dict[str, Any]:
    seed_everything(cfg.seed)
    data = load_data(cfg)
    data_seconds = time.perf_counter() - started
    for note in data.notes:
        log.warning("%s", note)
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in data.summary().items()))

    seed_everything(cfg.seed)
    model = build_model(cfg, data).to(device)
    size = model_size(model)
    parts = build_task(data, cfg, device)
    layer_knobs = {
        name: {"class": type(layer).__name__, **layer.knobs()}
        for name, layer in embedding_layers(model).items()
    }
    tracker.set_tags(
        {**parts.tags, **{f"knobs.{n}": json.dumps(k, default=str) for n, k in layer_knobs.items()}}
    )
    log.info(
        "model %s with %s embeddings: %d serving bits (%.1f%% of full)",
        type(model).__name__, cfg.method._target_.rsplit(".", 1)[-1], size.serving_bits,
        100 * size.fraction_of_full,
    )

    def validate() -> dict[str, float]:
        return parts.evaluator.evaluate(model, "valid")

    result = fit(
        model,
        parts.sampler,
        loss=cfg.train.loss,
        epochs=cfg.train.epochs,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        patience=cfg.train.patience,
        monitor=parts.monitor if parts.has_validation else None,
        validate=validate if parts.has_validation else None,
        on_epoch=lambda epoch, row: tracker.log_metrics(
            {k: v for k, v in row.items() if k != "epoch"}, step=epoch
        ),
        seed=cfg.seed,
        progress=cfg.train.progress,
        sparse=cfg.train.sparse,
        compile=cfg.train.compile,
    )

    # eval.test=false (tuning): the test split is neither evaluated nor recorded, nor is anything
    # that reads it (popularity on test, the serving artifact's reference scores).
    with_test = cfg.eval.get("test", True)
    metrics: dict[str, Any] = {}
    if with_test:
        eval_started = time.perf_counter()
        test = parts.evaluator.evaluate(model, "test")
        metrics["time/test_eval_seconds"] = time.perf_counter() - eval_started
        metrics.update({f"test/{k}": v for k, v in test.items()})
    if parts.has_validation:
        metrics.update({f"val/{k}": v for k, v in parts.evaluator.evaluate(model, "valid").items()})
    if with_test and data.task != "rating" and cfg.eval.popularity_baseline:
        popular = parts.evaluator.popularity(data.item_counts, "test")
        metrics.update({f"popularity/{k}": v for k, v in popular.items()})
    metrics.update(size.as_metrics())
    torch.save(model.state_dict(), run_dir / "model.pt")
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

    record = {
        "status": "FINISHED",
        **run_identity(cfg),
        "data": data.summary(),
        "notes": data.notes,
        "knobs": layer_knobs,
        "tags": parts.tags,
        "metrics": metrics,
        "history": result.history,
    }
    _write_json(run_dir / "metrics.json", record)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker.log_artifact(run_dir / "metrics.json")
    tracker.log_artifact(run_dir / "config.yaml")
    _print_summary(cfg, data, metrics)
    return metrics


def _export_serving(
    cfg: DictConfig, model: Recommender, data: PreparedData, parts: Any, run_dir: Path, tracker: Any
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


def _print_summary(cfg: DictConfig, data: PreparedData, metrics: dict[str, Any]) -> None:
    keys = [k for k in metrics if k.startswith("test/")] or [k for k in metrics if k.startswith("val/")]
    lines = [
        f"recbench: {cfg.dataset.name} / {cfg.model._target_.rsplit('.', 1)[-1]}"
        f" / {cfg.method._target_.rsplit('.', 1)[-1]} / seed {cfg.seed}"
        f" ({data.num_users} users, {data.num_items} items, task {data.task})",
        f"  {keys[0].split('/')[0] if keys else 'test':<12}"
        + "  ".join(f"{k.split('/', 1)[1]}={metrics[k]:.4f}" for k in keys),
    ]
    pop = [k for k in metrics if k.startswith("popularity/")]
    if pop:
        lines.append("  popularity  " + "  ".join(f"{k.split('/', 1)[1]}={metrics[k]:.4f}" for k in pop))
    bits = int(metrics["size/serving_bits"])
    lines.append(
        f"  size        {bits:,} serving bits ({bits / 8 / 2**20:.3f} MiB), "
        f"{100 * metrics['size/fraction_of_full']:.1f}% of full float32 embeddings"
    )
    lines.append(
        f"  time        train {metrics['time/train_seconds']:.1f}s "
        f"({metrics['time/train_samples_per_second']:,.0f} samples/s), "
        + (f"test eval {metrics['time/test_eval_seconds']:.2f}s, " if "time/test_eval_seconds" in metrics else "")
        + f"best epoch {int(metrics['fit/best_epoch'])}"
    )
    print("\n".join(lines), flush=True)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float | None:
    """Hydra entry point. User errors print one line and exit non-zero; in a sweep a failed run is
    recorded (FAILED in MLflow, metrics.json with the error) and the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = execute(cfg, run_dir)
        # Hydra's Optuna sweeper needs one float: the run's (best-epoch) validation metric.
        return objective(cfg, metrics) if multirun and is_optuna_sweep(hydra_cfg) else metrics
    except RecbenchError as exc:
        print(f"recbench: error: {exc}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(exc.exit_code)
        return {"status": "FAILED", "error": str(exc)}
    except Exception as exc:
        if not multirun:
            raise
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        print(f"recbench: run failed: {type(exc).__name__}: {exc} (traceback in {run_dir})", file=sys.stderr)
        return {"status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}


def cli() -> None:
    """Check the command line's configuration first (one-line errors), then hand over to Hydra."""
    argv = sys.argv[1:]
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in argv):
        problem = preflight(argv)
        if problem:
            print(f"recbench: error: {problem}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
