"""Recording runs to MLflow (sqlite store under outputs/ by default).

One MLflow run per training run: tags for dataset/model/method/seed and a hash of the resolved
config; the flattened config as params; per-epoch ``train/loss`` and ``val/...``; final ``test/...``,
``size/...`` and ``time/...`` metrics; the resolved config and metrics.json as artifacts. MLflow
metric names cannot contain ``@``: HR@10 is ``hr_at_10``. A run that raises is ended as FAILED with
the error message as a tag, so no half-finished run is ever marked FINISHED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Keys that do not change what a run computes, left out of the config hash.
_HASH_EXCLUDED = ("tracking", "dataset.categories", "train.progress", "train.compile", "eval.batch_size", "eval.serving_artifact", "force")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_hash(resolved: Mapping[str, Any]) -> str:
    """Stable hash of what a run computes (its resolved config minus bookkeeping keys)."""
    flat = {
        k: v
        for k, v in flatten(resolved).items()
        if not any(k == x or k.startswith(x + ".") for x in _HASH_EXCLUDED)
    }
    payload = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: Also left out of a report cell's key: the seed (a cell pools seeds) and the preset's name (a
#: label; the settings a preset makes are in the config itself).
CELL_EXCLUDED = (*_HASH_EXCLUDED, "seed", "preset")
#: What a ``*.hash_seed`` equal to the run's seed becomes in a cell key: "follows the seed".
FOLLOWS_SEED = "${seed}"


def param_text(value: Any) -> str:
    """A config value as MLflow params and the report record it: lists/dicts as JSON, None as
    ``""``, everything else ``str()`` (truncated as params are)."""
    text = _param_value(value)
    return "" if text in ("None", "null") else text


def is_hash_seed(key: str) -> bool:
    """``method.hash_seed``, ``user_method.hash_seed``: the seeds of hash functions."""
    return key.rsplit(".", 1)[-1] == "hash_seed"


def cell_config(flat: Mapping[str, Any]) -> dict[str, str]:
    """The part of a flattened config that decides which runs are seeds of one result: every key
    but ``CELL_EXCLUDED``, as text (so MLflow params and config.yaml give the same dict)."""
    return {
        k: param_text(v)
        for k, v in flat.items()
        if not any(k == x or k.startswith(x + ".") for x in CELL_EXCLUDED)
    }


def digest(values: Mapping[str, str]) -> str:
    """16 hex digits of the sha256 of a text dict (sorted JSON)."""
    return hashlib.sha256(json.dumps(dict(values), sort_keys=True).encode()).hexdigest()[:16]


def cell_hash(resolved: Mapping[str, Any]) -> str:
    """Hash of the resolved config without the seed and bookkeeping keys: runs with equal
    ``cell_hash`` differ only in their seed, so a report may pool them (recbench.report.cells).
    A ``hash_seed`` equal to the seed counts as following it."""
    flat = flatten(resolved)
    seed = param_text(flat.get("seed"))
    cfg = cell_config(flat)
    return digest({k: FOLLOWS_SEED if is_hash_seed(k) and v == seed else v for k, v in cfg.items()})


class NullTracker:
    """Records nothing (``tracking=none``); the run folder still gets metrics.json."""

    run_id: str | None = None

    def start(self, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass

    def find_finished(self, config_hash: str) -> dict[str, Any] | None:
        return None


class MlflowTracker:
    """Records one run to an MLflow tracking store."""

    def __init__(self, uri: str, experiment: str, artifact_root: str) -> None:
        import mlflow

        self.mlflow = mlflow
        self.uri = _absolute_sqlite_uri(uri)
        self.experiment = experiment
        self.artifact_root = Path(artifact_root).resolve()
        self.run_id: str | None = None
        self.client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=(self.artifact_root / self.experiment).as_uri()
            )
        except Exception:  # created concurrently by a parallel run
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> None:
        prepare_store(self.uri)
        run = _retry(
            lambda: self.client.create_run(
                self._experiment_id(), run_name=run_name, tags=dict(tags)
            )
        )
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            _retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if value is not None
        ]
        for start in range(0, len(batch), 500):
            chunk = batch[start : start + 500]
            _retry(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        if Path(path).is_dir():
            _retry(lambda: self.client.log_artifacts(self.run_id, str(path), subdir))
        else:
            _retry(lambda: self.client.log_artifact(self.run_id, str(path), subdir))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(self.run_id, tags=items))

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        if error:
            self.set_tags({"error": error})
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))


    def find_finished(self, config_hash: str) -> dict[str, Any] | None:
        """The latest FINISHED run of this experiment with the same config hash, as
        ``{"run_id", "run_dir", "metrics"}``; None when there is none (or the experiment is new)."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return None
        runs = _retry(
            lambda: self.client.search_runs(
                [found.experiment_id],
                filter_string=f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        )
        if not runs:
            return None
        run = runs[0]
        return {
            "run_id": run.info.run_id,
            "run_dir": run.data.tags.get("run_dir", ""),
            "metrics": dict(run.data.metrics),
        }


def prepare_store(uri: str) -> None:
    """Create a sqlite store (and its schema) once, before parallel runs race to migrate it.

    Two processes opening a brand-new sqlite file both run MLflow's schema migrations and one
    fails ("duplicate column"); the sweep callback calls this in the launching process first, and
    each run calls it again (a no-op once the schema exists), retrying while another process holds
    the lock or is half-way through the migration.
    """
    import mlflow

    uri = _absolute_sqlite_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    _retry(lambda: client.search_experiments(max_results=1), transient=("locked", "duplicate column", "already exists"))


def make_tracker(enabled: bool, uri: str, experiment: str, artifact_root: str) -> NullTracker | MlflowTracker:
    if not enabled:
        return NullTracker()
    return MlflowTracker(uri, experiment, artifact_root)


def _absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///outputs/mlflow.db`` is relative to the launch directory; make it absolute so
    that every process of a sweep writes to the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _retry(action, attempts: int = 8, delay: float = 0.25, transient: tuple[str, ...] = ("locked",)):  # noqa: ANN001, ANN202
    """Retry store writes that hit sqlite's 'database is locked' under parallel sweeps."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - mlflow wraps sqlite errors in several types
            text = str(exc).lower()
            if not any(t in text for t in transient) or attempt == attempts - 1:
                raise
            time.sleep(delay * (2**attempt))
    return None
