"""scripts/compare_runs.py: exact comparison of recorded results, on run folders it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import compare_runs  # noqa: E402


def write(
    folder: Path, name: str, hr: float, seconds: float = 1.0, status: str = "FINISHED"
) -> None:
    run = folder / name
    run.mkdir(parents=True)
    metrics = {"test/hr_at_10": hr, "best/ndcg_at_10": 0.05, "time/train_seconds": seconds}
    (run / "metrics.json").write_text(json.dumps({"status": status, "metrics": metrics}))


def test_sweeps_match_by_name_and_compare_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, after = tmp_path / "a", tmp_path / "b"
    write(before, "0_gmf_full_s0", 0.1)
    write(before, "1_gmf_dpq_s0", 0.2)
    write(after, "3_gmf_full_s0", 0.1, seconds=9.0)  # another job number and time: same run
    write(after, "0_gmf_dpq_s0", 0.2 + 1e-12)  # one ulp-ish away: a difference
    assert compare_runs.main([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "gmf_full_s0: identical" in out and "gmf_dpq_s0: 1 differ (test/hr_at_10" in out
    assert "2 compared, 1 differ" in out


def test_single_runs_missing_and_unfinished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a", "x", 0.1)
    write(tmp_path / "b", "y", 0.1, status="FAILED")
    assert compare_runs.main([str(tmp_path / "a" / "x"), str(tmp_path / "a" / "x")]) == 0
    assert "run: identical" in capsys.readouterr().out
    assert compare_runs.main([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "y")]) == 0
    assert "not compared (FINISHED / FAILED)" in capsys.readouterr().out
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "none")]) == 2
