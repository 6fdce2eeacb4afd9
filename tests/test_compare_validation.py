"""scripts/compare_validation.py: choosing between settings on validation, paired by seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import compare_validation  # noqa: E402


def write(
    folder: Path, seed: int, ndcg: float, rmse: float = 0.9, status: str = "FINISHED"
) -> None:
    run = folder / f"{seed}_neumf_full_s{seed}"
    run.mkdir(parents=True)
    metrics = {"best/ndcg_at_10": ndcg, "best/rmse": rmse, "test/ndcg_at_10": 1.0 - ndcg}
    record = {"status": status, "seed": str(seed), "metrics": metrics}
    (run / "metrics.json").write_text(json.dumps(record))


def test_pairs_by_seed_excludes_the_tuning_seed_and_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "tuned", tmp_path / "default"
    for seed, (x, y) in enumerate(
        [(0.0836, 0.0723), (0.0735, 0.0732), (0.0709, 0.0784), (0.0743, 0.0750)]
    ):
        write(a, seed, x)
        write(b, seed, y)
    write(a, 4, 0.0754)  # only in A: not paired
    write(b, 5, 0.07, status="FAILED")
    assert compare_validation.main([str(a), str(b), "--exclude-seeds", "0"]) == 0
    out = capsys.readouterr().out
    expected_p = stats.ttest_rel([0.0735, 0.0709, 0.0743], [0.0732, 0.0784, 0.0750]).pvalue
    assert "over seeds [1, 2, 3]: B is better" in out
    assert f"p = {expected_p:.3g}" in out
    assert f"{(0.0735 + 0.0709 + 0.0743) / 3:9.4f}" in out
    # With seed 0 (the one the study selected on) A looks better: the optimism the script removes.
    assert compare_validation.main([str(a), str(b)]) == 0
    assert "over seeds [0, 1, 2, 3]: A is better" in capsys.readouterr().out


def test_lower_is_better_for_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in range(3):
        write(a, seed, 0.05, rmse=0.90 + 0.01 * seed)
        write(b, seed, 0.05, rmse=0.95 + 0.02 * seed)
    assert compare_validation.main([str(a), str(b), "--metric", "best/rmse"]) == 0
    assert "A is better" in capsys.readouterr().out


def test_refuses_test_metrics_duplicate_seeds_and_empty_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, 0, 0.07)
    write(b, 1, 0.07)
    assert compare_validation.main([str(a), str(b), "--metric", "test/ndcg_at_10"]) == 2
    assert "not a validation metric" in capsys.readouterr().err
    assert compare_validation.main([str(a), str(b)]) == 2  # no common seed
    assert "no seed has a FINISHED run" in capsys.readouterr().err
    dup = tmp_path / "dup"
    write(dup, 0, 0.07)
    (dup / "9_again_s0").mkdir()
    (dup / "9_again_s0" / "metrics.json").write_text(
        json.dumps({"status": "FINISHED", "seed": "0", "metrics": {"best/ndcg_at_10": 0.08}})
    )
    assert compare_validation.main([str(dup), str(a)]) == 2
    assert "two runs of seed 0" in capsys.readouterr().err
