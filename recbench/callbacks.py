"""Hydra callbacks: the tracking store prepared before parallel runs start, and a summary at the
end of a sweep, so a failed run is never lost in the scroll."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_records(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The ``metrics.json`` of every run folder under a sweep directory (status, error, tags); a
    folder whose run died before recording anything is reported as NO_RECORD."""
    records = []
    for folder in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()):
        path = folder / "metrics.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            record = {"status": "NO_RECORD", "error": f"no metrics.json; see {folder}"}
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
        if r.get("status") not in ("FINISHED", "SKIPPED"):
            lines.append(f"  {r.get('status')}: {r['run_dir']}: {r.get('error', '')}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Prints ``summarize`` for the sweep directory when a multirun ends. (After Ctrl-C Hydra
    skips callbacks; rerunning the same sweep then completes only the missing runs.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.tracking.enabled:
            from recbench.tracking import prepare_store

            prepare_store(config.tracking.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        records = sweep_records(config.hydra.sweep.dir)
        print(summarize(records), flush=True)
