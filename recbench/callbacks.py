"""Hydra callbacks: the tracking store prepared before parallel runs start, and a summary at the
end of a sweep, so a failed run is never lost in the scroll (and the sweep's exit status says so:
``recbench.run.cli`` exits 1 when ``LAST_SWEEP["failed"]``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from recbench.record import HYDRA_DIR, METRICS_FILE

#: Statuses of a run folder that mean the configuration is done (SKIPPED: a twin FINISHED or is
#: being trained by another live process).
OK_STATUSES = ("FINISHED", "SKIPPED")
#: Set by ``SweepSummary.on_multirun_end`` in the launching process: ``{"failed": n, "runs": n}``.
LAST_SWEEP: dict[str, int] = {}


def sweep_records(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The ``metrics.json`` of every run folder under a sweep directory (status, error, tags); a
    folder whose run died before recording anything is reported as NO_RECORD."""
    records = []
    for folder in sorted(p for p in Path(sweep_dir).iterdir() if (p / HYDRA_DIR).is_dir()):
        path = folder / METRICS_FILE
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            record = {"status": "NO_RECORD", "error": f"no {METRICS_FILE}; see {folder}"}
        except (OSError, json.JSONDecodeError):
            record = {"status": "UNREADABLE", "error": f"cannot read {path}"}
        record["run_dir"] = str(folder)
        records.append(record)
    return records


def summarize(records: list[dict[str, Any]]) -> str:
    """One line of counts, then one line per failed run with its folder and error."""
    counts = Counter(r.get("status", "?") for r in records)
    head = "recbench sweep: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [head or "recbench sweep: no runs"]
    for r in records:
        if r.get("status") not in OK_STATUSES:
            lines.append(f"  {r.get('status')}: {r['run_dir']}: {r.get('error', '')}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Prints ``summarize`` for the sweep directory when a multirun ends. (After Ctrl-C Hydra
    skips callbacks; rerunning the same sweep then completes only the missing runs.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        LAST_SWEEP.clear()
        if config.tracking.enabled:
            import sys

            from recbench.tracking import StoreError, prepare_store

            try:
                prepare_store(config.tracking.uri)
            except StoreError as exc:  # Hydra turns a callback's exception into a warning
                print(f"recbench: error: {exc}", file=sys.stderr, flush=True)
                sys.exit(exc.exit_code)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        records = sweep_records(config.hydra.sweep.dir)
        print(summarize(records), flush=True)
        LAST_SWEEP["runs"] = len(records)
        LAST_SWEEP["failed"] = sum(r.get("status") not in OK_STATUSES for r in records)
