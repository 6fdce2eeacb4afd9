"""Figure helpers: the Pareto frontier, stable method colours, error-bar sources, and plots that
must not die on the blocks a real report meets (a block of unfinished runs, one-epoch runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recbench.report.plots import (
    METHOD_STYLE,
    error_columns,
    method_style,
    pareto_front,
    plot_quality_vs_size,
    plot_training_loss,
)
from recbench.report.tables import metric_specs

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_points() -> None:
    x = np.array([5.0, 10.0, 10.0, 25.0, 50.0, 100.0])
    y = np.array([0.10, 0.09, 0.12, 0.11, 0.15, 0.14])
    assert pareto_front(x, y, higher_is_better=True).tolist() == [0, 2, 4]
    assert pareto_front(x, -y, higher_is_better=False).tolist() == [0, 2, 4]  # RMSE-like


def test_method_colours_are_fixed_and_distinct() -> None:
    known = [m for m in METHOD_STYLE if m != "low_rank_r48"]
    assert len({METHOD_STYLE[m][0] for m in known}) == len(known)
    assert method_style("dpq") == METHOD_STYLE["dpq"]
    assert method_style("some_new_method") == method_style("some_new_method")  # stable hash


def test_error_bars_use_ci_columns_when_present() -> None:
    frame = pd.DataFrame({"test/hr_at_10 std": [0.1]})
    assert error_columns(frame, "test/hr_at_10")[0].startswith("±1 std")
    frame["test/hr_at_10 ci_low"], frame["test/hr_at_10 ci_high"] = [0.1], [0.2]
    assert error_columns(frame, "test/hr_at_10")[0].startswith("95% CI")


def _agg(n: list[int]) -> pd.DataFrame:
    return pd.DataFrame({
        "method": ["full", "dpq"], "user_method": ["", ""], "setting": ["", "budget=0.25"],
        "loss": ["bce", "bce"], "n": n,
        "size/fraction_of_full mean": [1.0, 0.24],
        "test/hr_at_10 mean": [0.3, 0.28], "test/hr_at_10 std": [0.01, 0.02],
        "test/ndcg_at_10 mean": [0.2, 0.18], "test/ndcg_at_10 std": [0.01, 0.02],
    })  # fmt: skip


def test_quality_vs_size_draws_and_survives_an_unfinished_block(tmp_path: Path) -> None:
    specs = metric_specs("ranking", ["test/hr_at_10", "test/ndcg_at_10", "size/fraction_of_full"])
    path = plot_quality_vs_size(_agg([3, 3]), specs, tmp_path / "q.png", "t")
    assert path.read_bytes().startswith(PNG)
    # Only RUNNING/FAILED runs (n = 0): once a raw pandas "Grouper ... not 1-dimensional" error.
    assert plot_quality_vs_size(_agg([0, 0]), specs, tmp_path / "e.png").exists()


def test_training_loss_with_one_epoch_runs_and_many_curves(tmp_path: Path) -> None:
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(10)],
                         "method": ["full"] + ["qr"] * 9, "user_method": [""] * 10,
                         "setting": [""] + [f"budget={b}" for b in range(9)]})  # fmt: skip
    history = pd.DataFrame({"run_id": [f"r{i}" for i in range(10)], "epoch": [1] * 10,
                            "value": np.linspace(1, 2, 10)})  # fmt: skip
    assert plot_training_loss(history, runs, tmp_path / "l.png", "t").read_bytes().startswith(PNG)
