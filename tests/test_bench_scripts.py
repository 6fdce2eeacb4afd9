"""The benchmark scripts' own logic: the sparse/dense crossover and a tiny end-to-end run."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_sparse_crossover as crossover_script  # noqa: E402
from bench_sparse_crossover import Pair, crossover  # noqa: E402


def pair(items: int, epoch_ratio: float, step_ratio: float = 0.5) -> Pair:
    return Pair(items, "full", 100.0, 0.0, 100.0 * step_ratio, 0.0, 100.0, 100.0 * epoch_ratio)


def test_crossover_interpolates_in_log_items_and_log_ratio() -> None:
    # ratio 0.5 at 1,000 and 2 at 10,000: log-ratio crosses 0 halfway, at sqrt(1e3 * 1e4) items
    pairs = [pair(10_000, 2.0), pair(1_000, 0.5), pair(100, 0.2)]
    assert crossover(pairs) == pytest.approx(math.sqrt(1_000 * 10_000))
    assert crossover(pairs, "step_ratio") is None  # sparse never wins per step here
    # no crossing when sparse already wins at the smallest size, or never wins
    assert crossover([pair(100, 1.5), pair(1_000, 3.0)]) is None
    assert crossover([pair(100, 0.5), pair(1_000, 0.9)]) is None
    # an exact tie at a measured size is the crossover
    assert crossover([pair(100, 0.5), pair(1_000, 1.0)]) == pytest.approx(1_000)


def test_script_runs_both_modes_and_writes_one_row_per_size(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.csv"
    argv = ["--items", "200,800", "--users", "60", "--events", "1500", "--batch-size", "256",
            "--steps", "2", "--warmup", "1", "--repeats", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert crossover_script.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["items"]) for r in rows] == [200, 800]
    assert all(float(r["dense_rate"]) > 0 and float(r["sparse_rate"]) > 0 for r in rows)
    assert "crossover on cpu" in capsys.readouterr().out


def test_bad_items_list_is_a_one_line_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        crossover_script.main(["--items", "3706,lots"])
    assert stop.value.code == 2
    assert "--items='3706,lots' must be a comma list of integers" in capsys.readouterr().err
