"""scripts/bench_method_cost.py (issue 16): the per-method training cost table on a tiny case."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_method_cost as cost  # noqa: E402

TINY = ["--users", "30", "--items", "40", "--events", "400", "--batch-size", "64", "--steps", "2",
        "--rounds", "3", "--warmup", "1", "--hook-epochs", "2", "--threads", "1"]  # fmt: skip


def test_table_has_every_method_full_at_one_and_unreachable_budgets(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cost.csv"
    assert cost.main([*TINY, "--budgets", "0.25,1e-9", "--no-memory", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    for budget in ("0.25", "1e-09"):
        group = [r for r in rows if r["budget"] == budget]
        assert [r["method"] for r in group] == ["full", *cost.METHODS]
        full = group[0]
        assert full["status"] == "ok"
        for key in ("step_ratio", "eval_ratio", "step_hooks_ratio"):
            assert float(full[key]) == 1.0
        assert float(full["serving_pct"]) == 100.0
        assert float(full["step_ms"]) > 0 and float(full["eval_ms"]) > 0
        assert float(full["state_kib"]) > float(full["serving_kib"])  # Adam's moments on top
    at_025 = {r["method"]: r for r in rows if r["budget"] == "0.25"}
    assert at_025["hashing"]["status"] == "ok" and float(at_025["hashing"]["serving_pct"]) < 30
    assert float(at_025["cce"]["hooks_ms"]) > 0 and int(at_025["cce"]["hook_epochs"]) == 2
    assert float(at_025["dpq"]["step_ratio"]) > 0 and math.isfinite(
        float(at_025["dpq"]["eval_ratio"])
    )
    impossible = {r["method"]: r for r in rows if r["budget"] == "1e-09"}
    dpq = impossible["dpq"]["status"]
    assert dpq.startswith("not reachable (min ") and 1e-9 < float(dpq[19:-1]) <= 1
    assert math.isnan(float(impossible["dpq"]["step_ms"]))
    printed = capsys.readouterr().out
    assert "| 1e-09 | dpq | not reachable (min " in printed
    assert "| 0.25 | full |" in printed and "wrote " in printed


def test_min_budget_bisects_when_the_error_carries_no_floor() -> None:
    args = argparse.Namespace(users=30, items=40, events=400, dataset="synthetic")
    base = cost.leaderboard_config(64)
    data = cost.load(base, args)
    from recbench.errors import ConfigError

    with pytest.raises(ConfigError) as failed:
        cost.build(base, data, "low_rank", 1e-3)
    named = cost.min_budget(failed.value, base, data, "low_rank", 1e-3)  # BudgetError.floor
    bisected = cost.min_budget(ConfigError("no floor"), base, data, "low_rank", 1e-3)
    assert named == pytest.approx(bisected, rel=2e-3)
    cost.build(base, data, "low_rank", bisected)  # reachable


def test_method_node_is_the_one_hydra_composes() -> None:
    base = cost.leaderboard_config(512)
    for method in ("cce", "mixed_dim"):  # cce: an interpolation into the root (hash_seed)
        composed = cost.compose(
            "gmf", method, 512, False, "cpu", (cost.EXPERIMENT, "method.budget=0.1")
        )
        mine = cost.method_config(base, method, 0.1)
        assert OmegaConf.to_container(mine, resolve=True) == OmegaConf.to_container(
            composed, resolve=True
        )


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_in_child_reports_each_phase() -> None:
    """In a fresh interpreter, as the script runs: a fork of the test runner itself, whose earlier
    tests left OpenMP pools and threads behind, can hang in the child (the script then gives up
    after CHILD_TIMEOUT_S, tested below)."""
    code = (
        "import argparse, json, sys; sys.path.insert(0, 'scripts'); import bench_method_cost as c; "
        "a = argparse.Namespace(users=30, items=40, events=400, dataset='synthetic', warmup=1, "
        "hook_epochs=2); b = c.leaderboard_config(64); "
        "print(json.dumps(c.peak_in_child(b, c.load(b, a), 'full', None, a)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(peaks) == set(cost.PHASES)
    assert all(math.isfinite(v) and v >= 0 for v in peaks.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_hung_memory_child_is_killed_and_reported_empty(monkeypatch, capsys) -> None:
    def hang(*_args, **_kwargs) -> None:
        time.sleep(60)

    monkeypatch.setattr(cost, "CHILD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(cost, "map_file_pages", hang)
    args = argparse.Namespace(warmup=1, hook_epochs=1)
    started = time.monotonic()
    assert cost.peak_in_child(None, None, "full", None, args) == {}
    assert time.monotonic() - started < 30
    assert "hung" in capsys.readouterr().err


def test_bad_budgets_are_a_one_line_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cost.main(["--budgets", "0.25,2"])
    assert stop.value.code == 2
    assert "--budgets='0.25,2' must be a comma list of numbers in (0, 1)" in capsys.readouterr().err


def test_unknown_dataset_is_a_one_line_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cost.main(["--dataset", "ml-9m"])
    assert stop.value.code == 2
    assert (
        "--dataset='ml-9m' is neither synthetic nor a file of conf/dataset/"
        in capsys.readouterr().err
    )
