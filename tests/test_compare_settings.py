"""scripts/compare_settings.py: tests among the settings of one method, on runs.csv files it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import compare_settings  # noqa: E402


def write_runs(path: Path, shift: float) -> Path:
    """Bloom runs of three hash families over 6 seeds; family b is ``shift`` higher on every seed."""
    noise = [0.001, -0.002, 0.003, 0.0, -0.001, -0.001]  # sums to 0
    rows = [
        {"method": "bloom", "status": "FINISHED", "seed": str(s),
         "knobs": json.dumps({"hash_family": fam, "hash_seed": str(s)}),
         "test/hr_at_10": 0.05 + (shift if fam == "b" else 0.0) + noise[s] * (1 if fam == "a" else -1)}
        for fam in ("a", "b", "c") for s in range(6)
    ] + [{"method": "full", "status": "FINISHED", "seed": "0", "knobs": "{}", "test/hr_at_10": 0.9}]  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "runs.csv", index=False)
    return path


def test_groups_and_p_values(tmp_path: Path) -> None:
    runs = pd.read_csv(write_runs(tmp_path / "far", 0.02) / "runs.csv", dtype={"seed": str})
    groups = compare_settings.groups_of(runs, "bloom", "hash_family", "test/hr_at_10")
    assert sorted(groups) == ["a", "b", "c"] and all(len(g) == 6 for g in groups.values())
    assert groups["b"].mean() - groups["a"].mean() == pytest.approx(0.02)
    far = compare_settings.compare(groups)
    assert far["anova_p"] < 0.001 and far["kruskal_p"] < 0.01 and far["friedman_p"] < 0.05
    near = pd.read_csv(write_runs(tmp_path / "near", 0.0) / "runs.csv", dtype={"seed": str})
    same = compare_settings.compare(
        compare_settings.groups_of(near, "bloom", "hash_family", "test/hr_at_10")
    )
    assert same["anova_p"] > 0.5


def test_cli_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_runs(tmp_path / "r", 0.02)
    assert compare_settings.main([str(folder), "--method", "bloom", "--knob", "hash_family",
                                  "--metric", "test/hr_at_10"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| b | 0.0700 |" in out and "3 groups of hash_family, n = 6 per group" in out
    assert compare_settings.main([str(tmp_path / "none"), "--method", "bloom", "--knob", "x"]) == 2
    assert "runs.csv is missing" in capsys.readouterr().err
    assert compare_settings.main([str(folder), "--method", "full", "--knob", "hash_family",
                                  "--metric", "test/hr_at_10"]) == 2  # fmt: skip
    assert "need at least 2" in capsys.readouterr().err
