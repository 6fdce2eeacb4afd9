"""Helpers of the reliability suite: real processes against real stores, bounded in time.

Every subprocess gets ``RECBENCH_CODE_ID`` so that resume decisions do not depend on whether the
checkout running the tests is clean (the git logic itself is tested in test_code_identity.py).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT

PY = sys.executable
TINY = [
    "dataset.loader.num_users=120",
    "dataset.loader.num_items=60",
    "dataset.loader.events_per_user=10",
    "train.epochs=1",
    "train.progress=false",
    "eval.serving_artifact=false",
]
CODE_ID = "reliability-test-code"


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out["RECBENCH_CODE_ID"] = CODE_ID
    out.pop("RECBENCH_LAUNCH_ID", None)
    out.update(extra)
    return out


def recbench_cmd(args: list[str], store: str, tmp: Path, multirun: bool = False) -> list[str]:
    """``python -m recbench.run`` against ``store`` with artifacts and folders under ``tmp``."""
    return [
        PY, "-m", "recbench.run", *(["-m"] if multirun else []),
        f"tracking.uri={store}", f"tracking.artifact_root={tmp / 'artifacts'}", *args,
    ]  # fmt: skip


def run(
    cmd: list[str], cwd: Path, timeout: float = 300, **extra: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=timeout
    )


def start(cmd: list[str], cwd: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=cwd, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not end within {timeout} s: {err[-2000:]}")
    return proc.returncode, out, err


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def logged_epochs(db: Path, run_dir: Path) -> int:
    """Epochs a RUNNING run in folder ``run_dir`` has logged (read straight from sqlite)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute(
                "select count(*) from metrics m join tags t on t.run_uuid = m.run_uuid "
                "where m.key = 'train/loss' and t.key = 'run_dir' and t.value = ?",
                (str(run_dir),),
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def one_line_error(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("recbench")]


def runs_of(uri: str, active_only: bool = True) -> list:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = client.search_experiments()
    view = ViewType.ACTIVE_ONLY if active_only else ViewType.ALL
    return client.search_runs([e.experiment_id for e in exps], run_view_type=view) if exps else []


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated sqlite store, created once (migrating a new store takes seconds)."""
    from recbench.tracking import open_store

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    open_store(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path: Path, store_template: Path) -> str:
    """A fresh copy of the template store in this test's folder, as a sqlite URI."""
    target = tmp_path / "mlflow.db"
    shutil.copy(store_template, target)
    return f"sqlite:///{target}"
