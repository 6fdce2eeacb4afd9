"""Recording runs to MLflow (sqlite store under outputs/ by default), safely under concurrency.

One MLflow run per training run: tags for dataset/model/method/seed, a hash of the resolved config
and the code's identity; the flattened config as params; per-epoch ``train/loss`` and ``val/...``;
final ``test/...``, ``size/...`` and ``time/...`` metrics; the resolved config and metrics.json as
artifacts. The names of all of these, and which config keys make up the resume key and a report
cell, are the record contract (``recbench.record``). ``Tracker`` is what ``recbench.run`` sees of a
store: ``MlflowTracker``, or ``NullTracker`` for ``tracking=none``.

What the record guarantees (README, "What the record guarantees"):

* **Store creation is serialized.** A sqlite store is created and migrated under a file lock beside
  it (``<store>.lock``), so parallel processes never race MLflow's schema migrations.
* **A configuration is claimed before it runs.** Under that lock (sqlite) or by a deterministic
  tie-break (a server), a run first looks for a FINISHED twin (same ``config_hash`` and
  ``code_identity``), then creates its RUNNING run and looks for RUNNING twins that are alive: the
  earliest claim wins, later ones delete their run and report SKIPPED. No configuration trains twice
  at once, none is lost.
* **Every end is recorded.** FINISHED, FAILED (an exception, ``error`` tag), KILLED (a signal), and
  LOST: a RUNNING run whose process died without a word (kill -9, a lost node) is found by the next
  command that reads the store (``find_lost``: same host and its pid is gone, or no heartbeat for
  ``LOST_AFTER_S``) and ended as KILLED with the tag ``state=LOST``.
* **An unusable store fails fast.** ``open_store`` checks reachability (a server: one HTTP probe
  with a short timeout) or the file (exists, is a sqlite database, is writable) and raises one
  ``StoreError`` line naming the URI and the fix, before any data is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from recbench import record
from recbench.errors import RecbenchError

log = logging.getLogger(__name__)


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
        if not any(k == x or k.startswith(x + ".") for x in record.RESUME_EXCLUDED)
    }
    payload = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_plumbing(key: str) -> bool:
    """``method._target_``, ``model._partial_``: Hydra's instantiation keys."""
    return key.rsplit(".", 1)[-1] in record.HYDRA_PLUMBING


def run_params(resolved: Mapping[str, Any], identity: Mapping[str, str]) -> dict[str, Any]:
    """What a run logs as MLflow params: the flattened resolved config without Hydra plumbing
    and bookkeeping (``record.PARAMS_EXCLUDED``), plus the chosen ``dataset``/``model``/``method``/
    ``user_method`` so that the runs table can show and filter them like any other param."""
    flat = {
        k: v
        for k, v in flatten(resolved).items()
        if not is_plumbing(k)
        and not any(k == x or k.startswith(x + ".") for x in record.PARAMS_EXCLUDED)
    }
    flat.update({key: identity.get(key, "") for key in record.LABEL_PARAMS})
    return flat


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
    but ``record.CELL_EXCLUDED``, Hydra's plumbing and the option labels (``LABEL_PARAMS``), as
    text (so MLflow params, which omit the plumbing, and config.yaml give the same dict)."""
    return {
        k: param_text(v)
        for k, v in flat.items()
        if not any(k == x or k.startswith(x + ".") for x in record.CELL_EXCLUDED)
        and not is_plumbing(k)
        and k not in record.LABEL_PARAMS
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


#: Tag holding recbench's view of a run's state: RUNNING, FINISHED, FAILED, KILLED or LOST. MLflow's
#: own status has no LOST; a lost run is ended as KILLED there and told apart by this tag.
STATE_TAG = "state"
LOST = "LOST"
ENDED = ("FINISHED", "FAILED", "KILLED")
_SQLITE = "sqlite:///"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(RecbenchError):
    """The tracking store cannot be used (unreachable, corrupted, read-only); one line, exit 2."""


def heartbeat_seconds() -> float:
    """How often a running run refreshes its ``heartbeat`` tag (``RECBENCH_HEARTBEAT_SECONDS``)."""
    return float(os.environ.get("RECBENCH_HEARTBEAT_SECONDS", "30"))


def lost_after_seconds() -> float:
    """A RUNNING run silent this long is LOST, wherever it ran (``RECBENCH_LOST_AFTER_SECONDS``).
    Must be well above the heartbeat interval: a live run beats every ``heartbeat_seconds()``."""
    return float(os.environ.get("RECBENCH_LOST_AFTER_SECONDS", "600"))


def host_id() -> str:
    """This machine: host name plus the kernel's boot id (two containers or two boots of one host
    with the same name are told apart, so a pid is only ever checked on the machine it lived on)."""
    boot = ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        pass
    return socket.gethostname() + (f"/{boot}" if boot else "")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def lost_reason(
    tags: Mapping[str, str], start_time_ms: int | None, now: float | None = None
) -> str | None:
    """Why a RUNNING run is lost, or None while it may still be alive: its process (same host) is
    gone, or it has not refreshed its heartbeat for ``lost_after_seconds()``."""
    now = time.time() if now is None else now
    try:
        beat = float(tags.get("heartbeat") or 0)
    except ValueError:
        beat = 0.0
    beat = beat or (start_time_ms or 0) / 1000
    host, pid = tags.get("host", ""), tags.get("pid", "")
    if host and host == host_id() and pid.isdigit() and not pid_alive(int(pid)):
        return (
            f"lost: process {pid} on {host.split('/')[0]} ended without recording an end (SIGKILL, "
            f"out of memory or a crash); last heartbeat {now - beat:.0f} s before it was found"
        )
    if now - beat > lost_after_seconds():
        return (
            f"lost: no heartbeat for {now - beat:.0f} s (limit {lost_after_seconds():.0f} s, "
            f"RECBENCH_LOST_AFTER_SECONDS) from pid {pid or '?'} on {host.split('/')[0] or 'an unknown host'}"
        )
    return None


def find_lost(client: Any, experiment_ids: list[str], mark: bool = True) -> dict[str, str]:
    """RUNNING runs of the experiments whose process is gone, ``{run_id: reason}``; with ``mark``
    each is ended as KILLED (end time = its last heartbeat) with ``state=LOST`` and the reason as
    its ``error`` tag. Called by every run (before it claims) and by the report."""
    if not experiment_ids:
        return {}
    from mlflow.entities import RunTag

    found: dict[str, str] = {}
    token = None
    while True:
        page = _retry(
            lambda token=token: client.search_runs(
                experiment_ids, "attributes.status = 'RUNNING'", max_results=1000, page_token=token
            )
        )
        now = time.time()
        for run in page:
            reason = lost_reason(run.data.tags, run.info.start_time, now)
            if reason is None:
                continue
            found[run.info.run_id] = reason
            if mark:
                try:
                    tags = [RunTag(STATE_TAG, LOST), RunTag("error", reason)]
                    _retry(lambda run=run, tags=tags: client.log_batch(run.info.run_id, tags=tags))
                    beat = run.data.tags.get("heartbeat", "")
                    end = int(float(beat) * 1000) if beat.replace(".", "", 1).isdigit() else None
                    _retry(
                        lambda run=run, end=end: client.set_terminated(
                            run.info.run_id, "KILLED", end
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - a read-only store still reports it
                    log.debug("could not mark run %s lost: %s", run.info.run_id, exc)
        token = page.token
        if not token:
            return found


# ----------------------------------------------------------------------------- the store itself
def _bound_http_retries() -> None:
    """MLflow retries a failing server for minutes by default (7 retries, backoff 2, 120 s timeout);
    bound it so that a server that goes away mid-run fails within about half a minute. Explicit
    settings in the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def probe_server(uri: str, hint: str, timeout: float = 5.0) -> None:
    """One GET of the server's ``/health`` within ``timeout`` seconds; StoreError when nothing
    answers (refused, unknown host, timeout) or it answers with a server error."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - the user's tracking URI
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answers (e.g. 401/404 behind a proxy): let MLflow talk to it
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
    raise StoreError(
        f"cannot reach the MLflow tracking server {uri} ({reason}, within {timeout:.0f} s); start "
        f"it (README: 'A tracking server'), fix {hint}, or record locally with "
        f"{hint}{'=' if hint.startswith('tracking') else ' '}sqlite:///outputs/mlflow.db"
    )


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite URI (absolute), else None."""
    uri = _absolute_sqlite_uri(uri)
    return Path(uri.removeprefix(_SQLITE)) if uri.startswith(_SQLITE) else None


def first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_dir_problem(path: Path, what: str) -> str | None:
    """Why a folder cannot be created/written at ``path`` (a file in the way, read-only), or None."""
    existing = first_existing(Path(path))
    if not existing.is_dir():
        return f"{what} {path} cannot be created: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be written: {existing} is read-only"
    return None


def check_sqlite_file(path: Path, hint: str, *, create: bool = True, write: bool = True) -> None:
    """A sqlite store file that is a database, readable and (for runs) writable; one-line errors."""
    if path.is_dir():
        raise StoreError(f"the MLflow store {path} is a folder, not a sqlite file; fix {hint}")
    if path.exists():
        try:
            with open(path, "rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            raise StoreError(
                f"cannot read the MLflow store {path} ({exc.strerror}); fix its permissions or {hint}"
            ) from None
        if head and head != _SQLITE_MAGIC:
            raise StoreError(
                f"the MLflow store {path} is not a sqlite database (corrupted or another kind of "
                f"file); move it away (a new store is then created) or point {hint} at another file"
            )
        if write and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            raise StoreError(
                f"the MLflow store {path} is read-only (sqlite needs the file and its folder "
                f"writable); fix the permissions, point {hint} at a writable file, or pass tracking=none"
            )
        return
    if not create:
        raise StoreError(f"no MLflow store at {path}; fix {hint}")
    problem = writable_dir_problem(path.parent, "the MLflow store's folder")
    if problem:
        raise StoreError(f"{problem}; point {hint} at a writable place or pass tracking=none")


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = 300.0) -> Iterator[None]:
    """Exclusive lock of a sqlite store across processes (``<store>.lock``, the ``filelock``
    package); a no-op for servers, whose database serializes writes itself."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise StoreError(
            f"waited {timeout:.0f} s for the lock {path}.lock of the MLflow store; another process "
            "holds it (if none is running, delete the lock file)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def open_store(
    uri: str, hint: str = "tracking.uri", *, create: bool = True, write: bool = True
) -> str:
    """Check that the store at ``uri`` can be used and create/migrate it once (under the lock);
    returns the absolute URI. Raises StoreError with one line naming the URI and the fix."""
    import mlflow

    uri = _absolute_sqlite_uri(uri)
    _bound_http_retries()
    path = sqlite_path(uri)
    if uri.startswith(("http://", "https://")):
        probe_server(uri, hint)
    elif path is not None:
        check_sqlite_file(path, hint, create=create, write=write)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    lock = store_lock(uri) if (path is not None and write) else contextlib.nullcontext()
    with lock:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        try:
            _retry(
                lambda: client.search_experiments(max_results=1),
                transient=("locked", "duplicate column", "already exists"),
            )
        except Exception as exc:  # noqa: BLE001 - mlflow raises many types for a bad store
            raise StoreError(
                f"cannot use the MLflow store {uri} ({_first_line(exc)}); fix {hint} (a new "
                "sqlite file is created when missing) or move a corrupted store away"
            ) from None
    return uri


def prepare_store(uri: str) -> None:
    """Create a store (and its schema) once, before parallel runs start (the sweep callback)."""
    open_store(uri)


# ----------------------------------------------------------------------------------- trackers
@dataclass
class Twin:
    """A run that makes this one unnecessary: FINISHED with the same config and code, or RUNNING
    (alive) with the same config and code and an earlier claim."""

    run_id: str
    status: str
    run_dir: str
    metrics: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "run_dir": self.run_dir,
            "metrics": self.metrics,
        }


class Tracker(Protocol):
    """What a run records through, whichever the store: claim the configuration, log params,
    metrics, tags, the dataset and artifacts, keep a heartbeat, and end with a status."""

    run_id: str | None

    def open(self) -> None: ...

    def claim(self, run_name: str, tags: Mapping[str, str], **kwargs: Any) -> Twin | None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_dataset(
        self, name: str, digest: str, source: str, profile: Mapping[str, Any]
    ) -> None: ...

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def beat(self) -> None: ...

    def heartbeat(self) -> contextlib.AbstractContextManager[None]: ...

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None: ...


class NullTracker:
    """Records nothing (``tracking=none``); the run folder still gets metrics.json."""

    run_id: str | None = None

    def open(self) -> None:
        pass

    def claim(self, run_name: str, tags: Mapping[str, str], **_: Any) -> Twin | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def beat(self) -> None:
        pass

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        yield

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass


class MlflowTracker:
    """Records one run to an MLflow tracking store (see the module docstring for the protocol)."""

    def __init__(self, uri: str, experiment: str, artifact_root: str) -> None:
        self.uri = _absolute_sqlite_uri(uri)
        self.experiment = experiment
        self.artifact_root = Path(artifact_root).resolve()
        self.run_id: str | None = None
        self.client: Any = None
        self.experiment_id = ""

    def open(self) -> None:
        """Fail fast on an unusable store or artifact folder; create the experiment."""
        import mlflow

        self.uri = open_store(self.uri)
        self.client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        with store_lock(self.uri):
            self.experiment_id = self._experiment_id()
        experiment = _retry(lambda: self.client.get_experiment(self.experiment_id))
        location = experiment.artifact_location
        for key, value in experiment_tags(self.experiment).items():  # stores from older versions
            if key not in experiment.tags:
                _retry(
                    lambda key=key, value=value: self.client.set_experiment_tag(
                        self.experiment_id, key, value
                    )
                )
        local = _local_path(location)
        if local is not None:
            problem = writable_dir_problem(
                local, f"the artifact folder of experiment {self.experiment!r}"
            )
            if problem:
                raise StoreError(
                    f"{problem}; make it writable, or record elsewhere (tracking.uri, tracking.experiment)"
                )

    def _experiment_id(self) -> str:
        found = _retry(lambda: self.client.get_experiment_by_name(self.experiment))
        if found is not None:
            return found.experiment_id
        remote = not self.uri.startswith(_SQLITE) and "://" in self.uri
        # A server stores artifacts where it is told to (--artifacts-destination); a local store
        # puts them under tracking.artifact_root.
        location = None if remote else (self.artifact_root / self.experiment).as_uri()
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=location, tags=experiment_tags(self.experiment)
            )
        except Exception:  # created concurrently by another process
            found = _retry(lambda: self.client.get_experiment_by_name(self.experiment))
            if found is None:
                raise
            return found.experiment_id

    def claim(
        self,
        run_name: str,
        tags: Mapping[str, str],
        *,
        config_hash: str,
        code_identity: str | None,
        reuse_finished: bool = True,
        force: bool = False,
    ) -> Twin | None:
        """Create this run's RUNNING record unless a twin makes it unnecessary (returned then).

        Twins share ``config_hash`` and, unless ``code_identity`` is None (``resume=any_code``),
        ``code_identity``. A FINISHED twin counts only when ``reuse_finished`` (the code is
        clean); a RUNNING twin counts when it is alive and claimed first (start time, then run
        id): both claimants see each other, so exactly one of them runs. ``force`` claims
        unconditionally."""
        with store_lock(self.uri):
            find_lost(self.client, [self.experiment_id])
            if not force and reuse_finished:
                done = self._twins(config_hash, code_identity, "FINISHED")
                if done:
                    return done[0][1]
            now = time.time()
            run_tags = {
                **tags,
                STATE_TAG: "RUNNING",
                "host": host_id(),
                "pid": str(os.getpid()),
                "heartbeat": f"{now:.3f}",
            }
            run = _retry(
                lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
            )
            self.run_id = run.info.run_id
            if force:
                return None
            mine = (run.info.start_time, run.info.run_id)
            earlier = [
                twin for key, twin in self._twins(config_hash, code_identity, "RUNNING")
                if key < mine
            ]  # fmt: skip
            if reuse_finished:
                earlier += [twin for _, twin in self._twins(config_hash, code_identity, "FINISHED")]
            if earlier:
                _retry(lambda: self.client.delete_run(run.info.run_id))
                self.run_id = None
                return earlier[0]
        return None

    def _twins(
        self, config_hash: str, code_identity: str | None, status: str
    ) -> list[tuple[tuple[int, str], Twin]]:
        """Runs of this experiment with the config (and code) in ``status``, alive ones only for
        RUNNING, sorted by claim (start time, run id), latest first for FINISHED."""
        query = f"tags.config_hash = '{config_hash}' and attributes.status = '{status}'"
        if code_identity is not None:
            query += f" and tags.code_identity = '{code_identity}'"
        runs = _retry(
            lambda: self.client.search_runs(
                [self.experiment_id],
                filter_string=query,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
            )  # fmt: skip
        )
        now = time.time()
        out = []
        for run in runs:
            if status == "RUNNING" and lost_reason(run.data.tags, run.info.start_time, now):
                continue
            twin = Twin(
                run.info.run_id, status, run.data.tags.get("run_dir", ""), dict(run.data.metrics)
            )
            out.append(((run.info.start_time, run.info.run_id), twin))
        if status == "RUNNING":
            out.sort(key=lambda pair: pair[0])
        return out

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            _retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
        """Record the run's data with ``mlflow.log_input`` semantics (the run page's "Datasets"
        and the runs table's Dataset column): name, digest (same data, same digest) and source."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag

        origin = CodeDatasetSource(tags={"source": source})  # a generator: the code is the source
        if Path(source).is_absolute():
            try:
                with warnings.catch_warnings():  # "can be interpreted in multiple ways": noise
                    warnings.simplefilter("ignore")
                    origin = resolve_dataset_source(source)
            except Exception:  # noqa: BLE001 - MLflow knows no source for it: keep the code's
                pass
        meta = MetaDataset(origin, name=name, digest=digest[:12])._to_mlflow_entity()
        entity = Dataset(
            name=meta.name, digest=meta.digest, source_type=meta.source_type, source=meta.source,
            schema=meta.schema, profile=json.dumps(dict(profile), default=str),
        )  # fmt: skip
        context = [InputTag("mlflow.data.context", "train")]
        _retry(
            lambda: self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, context)])
        )

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

    def beat(self) -> None:
        """Refresh the ``heartbeat`` tag (every epoch, and from a thread in between)."""
        if self.run_id is not None:
            self.set_tags({"heartbeat": f"{time.time():.3f}"})

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """A daemon thread that calls ``beat`` every ``heartbeat_seconds()`` while the block runs,
        so a run on another machine is recognised as alive even during long epochs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(heartbeat_seconds()):
                try:
                    self.beat()
                except Exception as exc:  # noqa: BLE001 - a missed beat is not an error
                    log.debug("heartbeat failed: %s", exc)

        thread = threading.Thread(target=loop, name="recbench-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        self.set_tags({STATE_TAG: status, **({"error": error} if error else {})})
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))


#: Metrics shown as columns of the runs table by the view ``experiment_tags`` shares.
TABLE_COLUMNS = (
    record.key(record.TEST, record.metric_name("hr", 10)),
    record.key(record.TEST, record.metric_name("ndcg", 10)),
    "size/fraction_of_full",
    "time/train_seconds",
)
#: Key of that shared view (``#/experiments/<id>?viewStateShareKey=recbench``).
VIEW_KEY = "recbench"


def experiment_tags(name: str) -> dict[str, str]:
    """Tags of an experiment recbench uses (set when absent; a user's edits stay): the classic ML view rather than MLflow 3's GenAI one
    (``mlflow.experimentKind``), a description (``mlflow.note.content``) and a shared view of the
    runs table with the headline metrics as columns (``mlflow.sharedViewState.<key>``, what the
    UI's "Share" button writes)."""
    columns = [f"metrics.`{m}`" for m in TABLE_COLUMNS] + ["params.`method.budget`"]
    view = {"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False}
    note = (
        f"recbench runs on **{name}**: one run per (dataset, backbone, compression method, size, "
        "seed). Metrics: `test/*` (final test quality of the restored best epoch), `best/*` "
        "(its validation values), `val/*` and `train/loss` (per epoch), `size/*` "
        "(`size/fraction_of_full` = serving size / full float32 model), `time/*`. Runs of one "
        "sweep share the tag `sweep_id` (filter `tags.sweep_id = '...'`). The headline columns: "
        f"open this experiment with `?viewStateShareKey={VIEW_KEY}`. "
        "Tables and plots: `python -m recbench.report`."
    )
    return {
        "mlflow.experimentKind": "custom_model_development",
        "mlflow.note.content": note,
        f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(view),
    }


def make_tracker(enabled: bool, uri: str, experiment: str, artifact_root: str) -> Tracker:
    if not enabled:
        return NullTracker()
    return MlflowTracker(uri, experiment, artifact_root)


def _local_path(location: str | None) -> Path | None:
    """The local folder of an artifact location (``file:`` URI or a plain path), else None."""
    if not location:
        return None
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    if "://" in location or location.startswith(("mlflow-artifacts:", "dbfs:")):
        return None
    return Path(location)


def _absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///outputs/mlflow.db`` is relative to the launch directory; make it absolute so
    that every process of a sweep writes to the same store."""
    prefix = _SQLITE
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _retry(
    action, attempts: int = 8, delay: float = 0.25, transient: tuple[str, ...] = ("locked",)
):  # noqa: ANN001, ANN202
    """Retry store writes that hit sqlite's 'database is locked' under parallel sweeps. Each
    attempt is a ``critical`` block: a signal never interrupts a write half-way."""
    from recbench.interrupts import critical

    for attempt in range(attempts):
        try:
            with critical():
                return action()
        except Exception as exc:  # noqa: BLE001 - mlflow wraps sqlite errors in several types
            text = str(exc).lower()
            if not any(t in text for t in transient) or attempt == attempts - 1:
                raise
            time.sleep(delay * (2**attempt))
    return None
