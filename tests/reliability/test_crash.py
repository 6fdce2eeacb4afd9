"""Runs that end abnormally: a signal (SIGTERM as a scheduler's time limit sends, SIGINT as Ctrl-C)
records KILLED with the history so far and prints one line; kill -9 leaves a RUNNING run that the
next command touching the store marks LOST; the report counts both apart from FAILED."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from recbench.tracking import lost_reason
from tests.reliability.conftest import (
    finish,
    logged_epochs,
    one_line_error,
    recbench_cmd,
    runs_of,
    start,
    wait_for,
)

LONG = [
    "dataset.loader.num_users=150", "dataset.loader.num_items=80", "dataset.loader.events_per_user=10",
    "train.epochs=100000", "train.patience=0", "train.progress=false", "eval.serving_artifact=false",
]  # fmt: skip


def test_sigterm_kill9_and_sigint_are_recorded_apart(tmp_path: Path, store: str) -> None:
    db = Path(store.removeprefix("sqlite:///"))
    procs = {}
    for name, seed in (("term", 0), ("kill", 1), ("int", 2)):
        folder = tmp_path / name
        cmd = recbench_cmd([*LONG, f"seed={seed}", f"hydra.run.dir={folder}"], store, tmp_path)
        procs[name] = (start(cmd, tmp_path), folder)
    for name, (proc, folder) in procs.items():
        wait_for(lambda folder=folder, proc=proc: logged_epochs(db, folder) >= 2 or proc.poll() is not None,
                 240, f"{name} to train two epochs")  # fmt: skip
        assert procs[name][0].poll() is None, finish(proc)[2][-2000:]
    procs["term"][0].send_signal(signal.SIGTERM)
    procs["kill"][0].send_signal(signal.SIGKILL)
    procs["int"][0].send_signal(signal.SIGINT)
    results = {name: finish(proc, 60) for name, (proc, _) in procs.items()}

    for name, code in (("term", 128 + signal.SIGTERM), ("int", 128 + signal.SIGINT)):
        rc, _, err = results[name]
        assert rc == code, err[-2000:]
        assert "Traceback" not in err
        (line,) = one_line_error(err)
        assert f"stopped by SIG{name.upper()} after" in line and "recorded KILLED" in line
        record = json.loads((procs[name][1] / "metrics.json").read_text())
        assert record["status"] == "KILLED" and record["epochs_done"] >= 2
        assert len(record["history"]) == record["epochs_done"]
        assert record["code_identity"] and "git_commit" in record
    assert results["kill"][0] == -signal.SIGKILL

    # the report is the next command touching the store: the killed run becomes LOST
    from recbench.report.cli import main as report

    assert (
        report(["--uri", store, "--no-plots", "--no-mlflow", "--out", str(tmp_path / "rep")]) == 0
    )
    by_seed = {r.data.tags["seed"]: r for r in runs_of(store)}
    assert by_seed["0"].info.status == "KILLED" and by_seed["0"].data.tags["state"] == "KILLED"
    assert by_seed["2"].info.status == "KILLED"
    assert by_seed["1"].info.status == "KILLED" and by_seed["1"].data.tags["state"] == "LOST"
    assert "lost: process" in by_seed["1"].data.tags["error"]
    assert all(r.info.status != "RUNNING" for r in runs_of(store))
    failed = (tmp_path / "rep" / "all" / "failed.csv").read_text()
    assert "LOST" in failed and "KILLED" in failed and "FAILED" not in failed


def test_lost_reason_by_pid_and_by_heartbeat() -> None:
    from recbench.tracking import host_id

    now = 1_000_000.0
    alive = {"host": host_id(), "pid": "1", "heartbeat": str(now - 5)}
    assert lost_reason(alive, None, now) is None  # pid 1 exists
    gone = {**alive, "pid": str(2**22 + 777)}
    assert "ended without recording an end" in lost_reason(gone, None, now)
    remote = {"host": "elsewhere/abc", "pid": "1", "heartbeat": str(now - 5)}
    assert lost_reason(remote, None, now) is None  # another machine: only the heartbeat tells
    stale = {**remote, "heartbeat": str(now - 10_000)}
    assert "no heartbeat for" in lost_reason(stale, None, now)
    assert "no heartbeat" in lost_reason({}, int((now - 10_000) * 1000), now)  # older runs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_becomes_interrupted_in_process(signum: int) -> None:
    import os

    from recbench.interrupts import Interrupted, signals_raise

    with pytest.raises(Interrupted) as caught, signals_raise():
        os.kill(os.getpid(), signum)
        import time

        time.sleep(5)
    assert caught.value.signum == signum and caught.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is not signal.default_int_handler or signum == signal.SIGINT
