"""The scale-out path: a real ``mlflow server`` (sqlite backend and artifact store in a temporary
folder, 127.0.0.1, a free port), two sweeps against it at once, one with two parallel joblib
workers: every run recorded exactly once, each folder matching its run; a rerun adds none."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.reliability.conftest import PY, TINY, env, finish, recbench_cmd, runs_of, start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):  # noqa: ANN201
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    mlflow = [PY, "-m", "mlflow", "server"]
    proc = subprocess.Popen(
        [*mlflow, "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "mlflow server did not start: "
                        + (tmp_path / "server.log").read_text()[-2000:]
                    )
                time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.mark.slow  # the server alone needs 10-100 s to start on 2 shared cores
def test_two_sweeps_with_parallel_workers_against_a_server(tmp_path: Path, server: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweeps = {
        "a": ["train.lr=0.01", "seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "b": ["train.lr=0.002", "seed=0,1,2"],
    }
    for attempt, expected in (("first", "3 FINISHED"), ("again", "3 SKIPPED")):
        procs = {k: start(recbench_cmd([*TINY, *a], server, tmp_path / k, multirun=True), tmp_path)
                 for k, a in sweeps.items()}  # fmt: skip
        for name, proc in procs.items():
            rc, out, err = finish(proc, 600)
            assert rc == 0, f"{attempt} {name}: {err[-3000:]}"
            assert f"recbench sweep: {expected}" in out, out[-2000:]
        runs = runs_of(server)
        assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    folders = {r.data.tags["run_dir"] for r in runs}
    assert len(folders) == 6
    for r in runs:
        record = json.loads((Path(r.data.tags["run_dir"]) / "metrics.json").read_text())
        assert record["metrics"]["test/hr_at_10"] == pytest.approx(r.data.metrics["test/hr_at_10"])
        assert record["seed"] == r.data.tags["seed"]
    from mlflow.tracking import MlflowClient

    names = {a.path for a in MlflowClient(tracking_uri=server).list_artifacts(runs[0].info.run_id)}
    assert {"metrics.json", "config.yaml"} <= names  # artifacts went through the server
    assert any((tmp_path / "server-artifacts").rglob("metrics.json"))
