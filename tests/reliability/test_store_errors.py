"""An unusable store or output folder ends the command within seconds with one line (exit 2),
before any data is loaded; results recorded earlier stay readable."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from recbench.checks import preflight
from tests.reliability.conftest import PY, TINY, one_line_error, recbench_cmd, run, runs_of

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_for_run_and_report(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = run(recbench_cmd(TINY, uri, tmp_path), tmp_path, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = one_line_error(proc.stderr)
    assert uri in line and "cannot reach the MLflow tracking server" in line
    assert took < 60  # ~5 s on an idle machine (interpreter start-up included); 257 s before
    assert not (tmp_path / "outputs").exists()  # nothing created, nothing trained

    from recbench.report.cli import main as report

    started = time.monotonic()
    assert report(["--uri", uri, "--no-plots", "--out", str(tmp_path / "rep")]) == 2
    assert time.monotonic() - started < 15


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    """A port that accepts connections but never answers: the probe's timeout, not MLflow's minutes."""
    from recbench.tracking import StoreError, probe_server

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot reach"):
            probe_server(f"http://127.0.0.1:{server.getsockname()[1]}", "tracking.uri", timeout=1)
        assert time.monotonic() - started < 5


def test_corrupted_store_fails_with_one_line_and_keeps_the_folder_results(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    proc = run(recbench_cmd(TINY, f"sqlite:///{db}", tmp_path), tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = one_line_error(proc.stderr)
    assert str(db) in line and "not a sqlite database" in line
    assert db.read_bytes().startswith(b"this is not")  # left alone for the user to inspect


@pytest.mark.parametrize(
    ("make", "args", "expected"),
    [
        (lambda t: (t / "outputs").write_text("x"), [], "is a file, not a folder"),
        (
            lambda t: (t / "store").write_text("x"),
            ["tracking.uri=sqlite:///{t}/store/mlflow.db"],
            "is a file",
        ),
        (
            lambda t: (t / "store.db").mkdir(),
            ["tracking.uri=sqlite:///{t}/store.db"],
            "is a folder",
        ),
        (
            lambda t: (t / "art").write_text("x"),
            ["tracking.artifact_root={t}/art/x"],
            "tracking.artifact_root",
        ),
        (lambda t: None, ["tracking.experiment=../../x"], "not a plain name"),
    ],
    ids=[
        "outputs-is-a-file",
        "store-parent-is-a-file",
        "store-is-a-folder",
        "artifact-root-blocked",
        "experiment-escapes",
    ],
)
def test_destinations_checked_before_anything_runs(
    tmp_path: Path, monkeypatch, make, args, expected
) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    problem = preflight([a.format(t=tmp_path) for a in args], destinations=True)
    assert problem is not None and expected in problem and "\n" not in problem


def test_outputs_that_is_a_file_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "outputs").write_text("not a folder")
    proc = run([PY, "-m", "recbench.run", *TINY], tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = one_line_error(proc.stderr)
    assert "is a file, not a folder" in line


@pytest.mark.skipif(ROOT_USER, reason="root ignores file permissions")
def test_read_only_store_and_outputs(tmp_path: Path, store: str) -> None:
    db = Path(store.removeprefix("sqlite:///"))
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(db, 0o444)
    try:
        assert "read-only" in (preflight([f"tracking.uri={store}"], destinations=True) or "")
    finally:
        os.chmod(db, 0o644)
    os.chmod(folder, 0o555)
    try:
        problem = preflight([f"hydra.run.dir={folder}/run"], destinations=True)
        assert problem is not None and "read-only" in problem
        problem = preflight([f"tracking.artifact_root={folder}/art"], destinations=True)
        assert problem is not None and "read-only" in problem
    finally:
        os.chmod(folder, 0o755)


def test_read_only_checks_without_permissions(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The same checks with ``os.access`` saying no (root passes every permission check)."""
    from recbench import tracking
    from recbench.tracking import StoreError, check_sqlite_file, writable_dir_problem

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    monkeypatch.setattr(tracking.os, "access", lambda path, mode: False)
    with pytest.raises(StoreError, match="read-only"):
        check_sqlite_file(db, "tracking.uri")
    assert "read-only" in writable_dir_problem(tmp_path / "new", "the output folder")


def test_earlier_results_stay_readable_after_a_failed_command(tmp_path: Path, store: str) -> None:
    from recbench.tracking import MlflowTracker

    earlier = MlflowTracker(store, "synthetic", str(tmp_path / "artifacts"))
    earlier.open()
    assert (
        earlier.claim("earlier", {"config_hash": "h"}, config_hash="h", code_identity="c") is None
    )
    earlier.log_metrics({"test/hr_at_10": 0.5})
    earlier.finish("FINISHED")
    for bad in (["method.budget=abc"], [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}/x"]):
        proc = run(recbench_cmd([*TINY, *bad], store, tmp_path), tmp_path)
        assert proc.returncode == 2 and len(one_line_error(proc.stderr)) == 1, proc.stderr[-2000:]
    (finished,) = runs_of(store)
    assert finished.info.status == "FINISHED" and finished.data.metrics["test/hr_at_10"] == 0.5
