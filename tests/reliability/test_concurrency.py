"""Many writers on one store: sweeps started in the same second, identical sweeps racing for the
same configurations, and the claim protocol itself (in-process, fast)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from recbench.tracking import MlflowTracker
from tests.reliability.conftest import TINY, finish, recbench_cmd, runs_of, start


def sweep(tmp: Path, store: str, name: str, *args: str) -> list[str]:
    return recbench_cmd([*TINY, *args], store, tmp / name, multirun=True)


@pytest.mark.slow  # 161 s wall on 2 loaded cores (65 s CPU): 4 processes, a store migration
def test_two_sweeps_in_the_same_second_on_a_new_store(tmp_path: Path) -> None:
    """The acceptance case: 2 x 3 runs, new sqlite store, started together; then both again."""
    store = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"  # does not exist yet
    args = {"a": ("train.lr=0.01", "seed=0,1,2"), "b": ("train.lr=0.002", "seed=0,1,2")}
    procs = {k: start(sweep(tmp_path, store, k, *a), tmp_path) for k, a in args.items()}
    for proc in procs.values():
        rc, out, err = finish(proc)
        assert rc == 0, err[-3000:]
        assert "recbench sweep: 3 FINISHED" in out, out[-1500:]
    runs = runs_of(store)
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    folders = {r.data.tags["run_dir"] for r in runs}
    assert len(folders) == 6
    for r in runs:  # each folder holds the config and metrics of its own MLflow run
        folder = Path(r.data.tags["run_dir"])
        record = json.loads((folder / "metrics.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert record["status"] == "FINISHED"
        assert str(config["train"]["lr"]) == r.data.params["train.lr"]
        assert str(config["seed"]) == r.data.tags["seed"]
        assert record["metrics"]["test/hr_at_10"] == pytest.approx(r.data.metrics["test/hr_at_10"])
    sweep_dirs = {Path(f).parent for f in folders}
    assert len(sweep_dirs) == 2  # one folder per sweep, although they started in the same second

    procs = {k: start(sweep(tmp_path, store, k, *a), tmp_path) for k, a in args.items()}
    for proc in procs.values():
        rc, out, err = finish(proc)
        assert rc == 0, err[-3000:]
        assert "recbench sweep: 3 SKIPPED" in out, out[-1500:]
    assert len(runs_of(store)) == 6


def test_identical_sweeps_train_each_configuration_once(tmp_path: Path, store: str) -> None:
    """Two identical sweeps at once: every configuration is claimed by exactly one of them."""
    procs = [start(sweep(tmp_path, store, f"s{i}", "seed=0,1"), tmp_path) for i in range(2)]
    outs = []
    for proc in procs:
        rc, out, err = finish(proc)
        assert rc == 0, err[-3000:]
        outs.append(out)
    runs = runs_of(store)
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"], [r.info.status for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    skipped = sum(o.count("recbench: skipped") for o in outs)
    assert skipped == 2, outs


# ------------------------------------------------------------------ the claim protocol in-process
def tracker(store: str, tmp_path: Path) -> MlflowTracker:
    t = MlflowTracker(store, "claims", str(tmp_path / "artifacts"))
    t.open()
    return t


def claim(t: MlflowTracker, code: str | None = "c1", reuse: bool = True, force: bool = False):  # noqa: ANN201
    return t.claim("r", {"config_hash": "h1", "code_identity": code or "c1"}, config_hash="h1",
                   code_identity=code, reuse_finished=reuse, force=force)  # fmt: skip


def test_a_running_claim_blocks_a_twin_until_it_ends(tmp_path: Path, store: str) -> None:
    first, second = tracker(store, tmp_path), tracker(store, tmp_path)
    assert claim(first) is None and first.run_id
    twin = claim(second)
    assert twin is not None and twin.status == "RUNNING" and twin.run_id == first.run_id
    assert second.run_id is None
    assert [r.info.run_id for r in runs_of(store)] == [first.run_id]  # the loser's run is gone
    first.finish("FINISHED")
    third = tracker(store, tmp_path)
    twin = claim(third)
    assert twin is not None and twin.status == "FINISHED"
    other_code = tracker(store, tmp_path)
    assert claim(other_code, code="c2") is None  # different code: not a twin
    dirty = tracker(store, tmp_path)
    assert claim(dirty, reuse=False) is None  # a dirty tree never reuses a FINISHED twin


def test_a_failed_twin_is_retried_and_force_always_claims(tmp_path: Path, store: str) -> None:
    first = tracker(store, tmp_path)
    assert claim(first) is None
    first.finish("FAILED", error="boom")
    assert claim(tracker(store, tmp_path)) is None
    forced = tracker(store, tmp_path)
    assert claim(forced, force=True) is None and forced.run_id


def test_a_dead_claim_does_not_block(tmp_path: Path, store: str) -> None:
    """A RUNNING twin whose process is gone is marked LOST and does not count."""
    dead = tracker(store, tmp_path)
    assert claim(dead) is None
    dead.set_tags({"pid": str(2**22 + 12345)})  # no such process on this host
    fresh = tracker(store, tmp_path)
    assert claim(fresh) is None
    (old,) = [r for r in runs_of(store) if r.info.run_id == dead.run_id]
    assert old.info.status == "KILLED" and old.data.tags["state"] == "LOST"
    assert os.getpid() != 2**22 + 12345
