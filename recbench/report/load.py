"""Recorded runs -> one pandas DataFrame, from an MLflow store or from run folders.

Why two sources with one shape: MLflow is the normal record, but ``tracking=none`` runs and sweep
folders copied off a cluster only have ``metrics.json``. Both loaders return the same columns
(``COLUMNS`` plus one column per metric, named as logged, e.g. ``test/hr_at_10``), so tables and
plots never care where a run came from. Tags that older runs lack (``experiment``, ``budget``,
``eval_protocol``) are filled from the run's config, so old and new runs aggregate together; the
``config`` column keeps the part of the recorded config that decides which runs pool as seeds
(``recbench.report.cells``), so runs recorded before the ``cell_hash`` tag are told apart too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from recbench import record
from recbench.errors import RecbenchError
from recbench.record import NON_KNOB_KEYS
from recbench.tracking import (
    LOST,
    STATE_TAG,
    StoreError,
    _absolute_sqlite_uri,
    cell_config,
    find_lost,
    flatten,
    open_store,
)

#: MLflow experiment that holds the reports themselves; never read back as benchmark runs.
REPORT_EXPERIMENT = "recbench-reports"

#: Columns every loader returns besides the metrics. ``knobs`` is the method's config as sorted
#: JSON (hashable, comparable); ``store_experiment`` is the MLflow experiment (or folder) name;
#: ``config`` the recorded config minus seed and bookkeeping keys as sorted JSON ("" if none was
#: recorded), ``config_hint`` the same from Hydra's unresolved config of a run folder that did not
#: finish (labels only); ``same_as`` the run a SKIPPED run folder duplicates (run id or folder).
COLUMNS = (
    "run_id", "run_name", "store_experiment", "status", "error", "start_time", *record.REPORT_TAGS,
    "knobs", "config", "config_hint", "same_as",
)  # fmt: skip


class ReportError(RecbenchError):
    """A report that cannot be made (no store, no runs, bad filter); one line naming the fix."""


def quiet_mlflow() -> None:
    """MLflow and alembic log every schema check at INFO; a report should print only its tables."""
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Normalising one run's tags/params/metrics into a row


def _none_text(value: Any) -> str:
    text = "" if value is None else str(value)
    return "" if text in ("None", "null") else text


def eval_protocol_of(tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The ``eval_protocol`` tag, or for runs recorded before it existed, derived from the config
    the same way (``full`` or ``sampled-<num_sampled>``)."""
    tag = _none_text(tags.get("eval_protocol"))
    if tag:
        return tag
    protocol = _none_text(params.get("eval.protocol")) or "full"
    if protocol == "sampled":
        return f"sampled-{_none_text(params.get('eval.num_sampled')) or '100'}"
    return protocol


def knobs_of(params: Mapping[str, Any]) -> str:
    """The item method's knobs (and the user method's, prefixed ``user.``) as sorted JSON, so that
    runs of one method at different sizes can be told apart when no budget tag says it."""
    knobs: dict[str, str] = {}
    for key, value in params.items():
        for prefix, label in (("method.", ""), ("user_method.", "user.")):
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if name.split(".", 1)[0] not in NON_KNOB_KEYS:
                    knobs[label + name] = _none_text(value)
    return json.dumps(knobs, sort_keys=True)


def make_row(
    run_id: str,
    run_name: str,
    store_experiment: str,
    status: str,
    start_time: Any,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """One normalised row; missing tags fall back to the params that carry the same fact."""
    if _none_text(tags.get(STATE_TAG)) == LOST:  # ended KILLED in MLflow, told apart by the tag
        status = LOST
    row: dict[str, Any] = {
        "run_id": run_id,
        "run_name": run_name,
        "store_experiment": store_experiment,
        "status": status,
        "error": _none_text(tags.get("error")),
        "start_time": start_time,
    }
    for key in record.REPORT_TAGS:
        row[key] = _none_text(tags.get(key))
    row["loss"] = row["loss"] or _none_text(params.get("train.loss"))
    row["task"] = row["task"] or _none_text(params.get("task"))
    row["budget"] = row["budget"] or _none_text(params.get("method.budget"))
    row["eval_protocol"] = eval_protocol_of(tags, params)
    row["knobs"] = knobs_of(params)
    row["config"] = json.dumps(cell_config(params), sort_keys=True) if params else ""
    row["config_hint"] = ""
    row["same_as"] = ""
    for key, value in metrics.items():
        try:
            row[key] = float(value)
        except (TypeError, ValueError):
            continue
    return row


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> DataFrame with ``COLUMNS`` first (present even when there are no rows)."""
    frame = pd.DataFrame(list(rows))
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    metrics = sorted(c for c in frame.columns if c not in COLUMNS)
    return frame[[*COLUMNS, *metrics]].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# MLflow


class MlflowSource:
    """Runs from an MLflow tracking store (a sqlite file by default).

    A sqlite URI is checked for an existing file first: opening a missing one would silently create
    an empty store, and the user would see "no runs" instead of "wrong path".
    """

    def __init__(self, uri: str) -> None:
        self.uri = _absolute_sqlite_uri(uri)
        if self.uri.startswith("sqlite:///"):
            path = Path(self.uri.removeprefix("sqlite:///"))
            if not path.is_file():
                raise ReportError(
                    f"no MLflow store at {path}; record runs with `python -m recbench.run` first, "
                    "pass --uri sqlite:///path/to/mlflow.db, or read run folders with --runs-dir"
                )
        quiet_mlflow()
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        if self.uri.startswith(("http://", "https://")):
            try:
                open_store(self.uri, "--uri", create=False, write=False)
            except StoreError as exc:
                raise ReportError(str(exc)) from None
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as exc:  # noqa: BLE001 - a corrupt file, an unreachable server, ...
            raise ReportError(
                f"cannot read the MLflow store {self.uri} ({_first_line(exc)}); "
                "pass a valid --uri, e.g. sqlite:///outputs/mlflow.db"
            ) from None

    def describe(self) -> str:
        return self.uri

    def experiment_names(self) -> list[str]:
        """Active experiments, the reports' own left out."""
        try:
            found = self.client.search_experiments()
        except Exception as exc:  # noqa: BLE001 - mlflow raises several types for a bad store
            raise ReportError(
                f"cannot read the MLflow store {self.uri} ({_first_line(exc)}); "
                "pass a valid --uri, e.g. sqlite:///outputs/mlflow.db"
            ) from None
        return [e.name for e in found if e.name != REPORT_EXPERIMENT]

    def runs(self, experiments: Sequence[str] = (), filter_string: str = "") -> pd.DataFrame:
        """All active runs of the named experiments (all but the reports' when none are named)
        that match ``filter_string`` (MLflow's search syntax)."""
        from mlflow.entities import ViewType

        available = self.experiment_names()
        names = list(experiments) or available
        missing = [n for n in names if n not in available]
        if missing:
            raise ReportError(
                f"no experiment named {', '.join(map(repr, missing))} in {self.uri}; "
                f"experiments there: {', '.join(available) or 'none'} (pass one with --experiment)"
            )
        ids = {self.client.get_experiment_by_name(n).experiment_id: n for n in names}
        if not ids:
            return to_frame([])
        # Runs whose process died without a word (kill -9, a lost node) are ended LOST here, so
        # that no run stays RUNNING forever (a read-only store is only reported, not marked).
        find_lost(self.client, list(ids))
        rows = []
        token = None
        while True:
            try:
                page = self.client.search_runs(
                    list(ids), filter_string or "", ViewType.ACTIVE_ONLY, 1000, page_token=token
                )
            except Exception as exc:  # noqa: BLE001
                raise ReportError(
                    f"bad --filter {filter_string!r} ({_first_line(exc)}); use MLflow's search "
                    "syntax, e.g. --filter \"tags.model = 'gmf' and params.train.epochs = '20'\""
                ) from None
            for run in page:
                info, data = run.info, run.data
                rows.append(
                    make_row(
                        info.run_id,
                        info.run_name or "",
                        ids.get(info.experiment_id, ""),
                        info.status,
                        pd.to_datetime(info.start_time, unit="ms"),
                        data.tags,
                        data.params,
                        data.metrics,
                    )  # fmt: skip
                )
            token = page.token
            if not token:
                break
        return to_frame(rows)

    def history(self, run_ids: Iterable[str], key: str = record.TRAIN_LOSS) -> pd.DataFrame:
        """Per-epoch values of ``key`` (step = epoch): columns run_id, epoch, value."""
        rows = []
        for run_id in run_ids:
            for m in self.client.get_metric_history(run_id, key):
                if m.step > 0:  # step 0 is the final summary, not an epoch
                    rows.append({"run_id": run_id, "epoch": int(m.step), "value": float(m.value)})
        return pd.DataFrame(rows, columns=["run_id", "epoch", "value"])


# ---------------------------------------------------------------------------------------------
# Run folders (metrics.json)


class FolderSource:
    """Runs from run folders under a directory (each with ``metrics.json`` and ``config.yaml``).

    ``run_id`` is the folder's path relative to the root. The config comes from ``config.yaml``
    (written by successful runs, resolved) or else Hydra's ``.hydra/config.yaml``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ReportError(
                f"no run folder {self.root}; pass --runs-dir outputs/multirun/<date>/<time> "
                "(a folder holding the runs' metrics.json)"
            )
        self._records: dict[str, dict[str, Any]] = {}

    def describe(self) -> str:
        return str(self.root)

    def runs(self, experiments: Sequence[str] = (), filter_string: str = "") -> pd.DataFrame:
        """Every run folder below the root; ``experiments`` matches the ``experiment`` (preset)
        tag, ``filter_string`` supports ``tags.K = 'V'`` / ``params.K != 'V'`` joined by AND."""
        clauses = parse_simple_filter(filter_string)
        rows = []
        for path in sorted(self.root.rglob(record.METRICS_FILE)):
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(saved, dict):
                continue
            run_dir = path.parent
            run_id = str(run_dir.relative_to(self.root))
            self._records[run_id] = saved
            params, resolved = _folder_params(run_dir)
            tags = {k: v for k, v in saved.items() if isinstance(v, (str, int, float))}
            tags.setdefault("run_dir", str(run_dir))
            # run folders record the preset as `preset` (older ones as `experiment`)
            preset = tags.get("preset") or tags.get("experiment")
            if experiments and _none_text(preset) not in experiments:
                continue
            if not all(_clause_holds(c, tags, params) for c in clauses):
                continue
            status = str(saved.get("status", "FINISHED"))
            metrics = saved.get("metrics") or {}
            same_as = saved.get("same_as")
            if status == "SKIPPED" and isinstance(same_as, dict):  # the finished twin's numbers
                metrics = same_as.get("metrics") or {}
            row = make_row(
                run_id, run_dir.name, self.root.name, status,
                pd.Timestamp(path.stat().st_mtime, unit="s"), tags, params, metrics,
            )  # fmt: skip
            if not resolved:  # Hydra's composed config: a hint for labels, not a cell key
                row["config_hint"], row["config"] = row["config"], ""
            if isinstance(same_as, dict):
                row["same_as"] = _none_text(same_as.get("run_id")) or _none_text(
                    same_as.get("run_dir")
                )
            rows.append(row)
        return to_frame(rows)

    def history(self, run_ids: Iterable[str], key: str = record.TRAIN_LOSS) -> pd.DataFrame:
        """Per-epoch values of ``key`` from each run's ``history`` list."""
        rows = []
        for run_id in run_ids:
            for entry in (self._records.get(run_id) or {}).get("history") or []:
                if key in entry and entry[key] is not None and "epoch" in entry:
                    rows.append(
                        {"run_id": run_id, "epoch": int(entry["epoch"]), "value": float(entry[key])}
                    )
        return pd.DataFrame(rows, columns=["run_id", "epoch", "value"])


def _folder_params(run_dir: Path) -> tuple[dict[str, str], bool]:
    """The run's flattened config as text, and whether it is the resolved one the run recorded
    (``config.yaml``). Runs that did not finish only have Hydra's ``.hydra/config.yaml``, whose
    interpolations are resolved here as far as possible (``${oc.env:...}`` against *this*
    environment, so it is only a hint of what the run saw)."""
    import yaml
    from omegaconf import OmegaConf

    for candidate in (run_dir / record.CONFIG_FILE, run_dir / record.HYDRA_CONFIG):
        if candidate.is_file():
            try:
                tree = yaml.safe_load(candidate.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if not isinstance(tree, dict):
                continue
            resolved = candidate == run_dir / record.CONFIG_FILE
            if not resolved:
                try:
                    tree = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
                except Exception:  # noqa: BLE001 - an interpolation only Hydra can resolve
                    pass
            params = {
                k: json.dumps(v) if isinstance(v, (list, dict)) else _none_text(v)
                for k, v in flatten(tree).items()
            }
            return params, resolved
    return {}, False


_CLAUSE = re.compile(
    r"""^\s*(?:(tags|params|attributes|attribute|tag|param)\.)?`?([\w./@-]+)`?\s*(=|!=)\s*(['"])(.*?)\4\s*$""",
    re.IGNORECASE,
)


def parse_simple_filter(text: str) -> list[tuple[str, str, str, str]]:
    """``tags.model = 'gmf' AND params.train.epochs != '5'`` -> [(kind, key, op, value), ...].

    Only what run folders can answer without MLflow; anything else is a one-line error."""
    if not text or not text.strip():
        return []
    out = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.match(part)
        if not match:
            raise ReportError(
                f"--filter clause {part.strip()!r} is not supported with --runs-dir; use "
                "tags.KEY = 'VALUE' or params.KEY != 'VALUE' clauses joined by AND"
            )
        kind, key, op, _, value = match.groups()
        kind = (kind or "attributes").lower().rstrip("s")
        out.append(("attribute" if kind.startswith("attribute") else kind, key, op, value))
    return out


def _clause_holds(
    clause: tuple[str, str, str, str], tags: Mapping[str, Any], params: Mapping[str, Any]
) -> bool:
    kind, key, op, value = clause
    source = params if kind == "param" else tags
    actual = _none_text(source.get(key))
    return (actual == value) if op == "=" else (actual != value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
