"""A budget the method cannot reach, in the report: a cell whose runs all FAILED with a recorded
``budget_floor`` reads "not reachable (min X %)" in table.md/.tex/.csv, is left out of failed.csv
and "not finished", and is listed in the summary's own section; a cell where such a run sits
beside a run that finished or failed otherwise is reported as before."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from recbench import record
from recbench.report.cli import main
from recbench.report.tables import unreachable_text

FLOOR = 0.078125  # learned quantization at 2 bits with one float32 step per row, d = 64


def write_run(root: Path, name: str, method: str, budget: str, seed: int, outcome: object) -> None:
    """One run folder as recbench.run writes it: FINISHED with an HR (a float), FAILED with a
    budget floor (``"floor"``) or FAILED with another error (``"error"``)."""
    run = root / name
    run.mkdir(parents=True)
    ident = {"dataset": "toy", "model": "gmf", "method": method, "user_method": "",
             "task": "ranking", "seed": str(seed), "loss": "bce", "budget": budget,
             "config_hash": f"{name}"}  # fmt: skip
    if outcome == "floor":
        saved = {"status": "FAILED", record.BUDGET_FLOOR: FLOOR, **ident,
                 "error": f"method.budget={budget} is impossible for LearnedQuantEmbedding"}  # fmt: skip
    elif outcome == "error":
        saved = {"status": "FAILED", "error": "RuntimeError: out of memory", **ident}
    else:
        hr = float(outcome)  # type: ignore[arg-type]
        saved = {"status": "FINISHED", **ident, "metrics": {
            "test/hr_at_10": hr, "test/ndcg_at_10": hr / 2,
            "size/fraction_of_full": float(budget or 1.0)}}  # fmt: skip
    (run / record.METRICS_FILE).write_text(json.dumps(saved))
    budget_line = f"  budget: {budget}\n" if budget else ""
    (run / record.CONFIG_FILE).write_text(
        f"seed: {seed}\nmethod:\n  _target_: x.{method}\n  init_std: 0.01\n{budget_line}"
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("unreachable")
    root = tmp / "sweep"
    cells = [
        ("full", "", [0.50, 0.52, 0.54]),
        ("learned_quant", "0.25", [0.49, 0.50, 0.51]),
        ("learned_quant", "0.05", ["floor", "floor", "floor"]),  # not reachable
        ("scalar_quant", "0.05", ["floor", "error", "floor"]),  # mixed: failures as before
        ("dpq", "0.1", [0.40, "error", 0.42]),  # a finished cell with one failure: as before
    ]
    for method, budget, outcomes in cells:
        for seed, outcome in enumerate(outcomes):
            write_run(root, f"{method}_{budget or 'x'}_s{seed}", method, budget, seed, outcome)
    out = tmp / "reports"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["--runs-dir", str(root), "--out", str(out), "--name", "r"]) == 0
    return out / "r", buffer.getvalue()


def test_unreachable_text() -> None:
    assert unreachable_text(FLOOR) == "not reachable (min 7.8 %)"
    assert unreachable_text(0.2734375) == "not reachable (min 27.3 %)"
    assert unreachable_text(1.0) == "not reachable (min 100 %)"
    assert unreachable_text(0.0012345) == "not reachable (min 0.12 %)"


def test_cell_reads_not_reachable_in_every_table(made: tuple[Path, str]) -> None:
    out, _ = made
    markdown = (out / "table.md").read_text()
    (row,) = [
        line for line in markdown.splitlines() if line.startswith("| learned_quant (budget=0.05")
    ]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["not reachable (min 7.8 %)"] * 3 + ["0"]  # HR, NDCG, size; n = 0
    assert "`not reachable (min X %)`: every run of the cell failed" in markdown
    assert r"not reachable (min 7.8 \%)" in (out / "table.tex").read_text()
    table = pd.read_csv(out / "table.csv").set_index("label")
    unreachable = table.loc["learned_quant (budget=0.05)"]
    assert unreachable["gmf note"] == "not reachable (min 7.8 %)"
    assert unreachable["gmf budget_floor"] == FLOOR and unreachable["gmf failed"] == 0
    assert math.isnan(unreachable["gmf HR@10 mean"])
    reached = table.loc["learned_quant (budget=0.25)"]  # other rows keep their numbers, no note
    assert reached["gmf HR@10 mean"] == pytest.approx(0.50) and pd.isna(reached["gmf note"])
    agg = pd.read_csv(out / "aggregate.csv")
    mine = agg[(agg["method"] == "learned_quant") & (agg["setting"] == "budget=0.05")]
    assert mine[["n", "n_failed", "n_unreachable", "budget_floor"]].values.tolist() == [
        [0, 0, 3, FLOOR]
    ]


def test_failed_csv_and_summary_leave_it_out(made: tuple[Path, str]) -> None:
    out, stdout = made
    failed = pd.read_csv(out / "failed.csv")
    assert "learned_quant" not in set(failed["method"])
    # the mixed cell and the finished cell with one failure are reported as before
    assert sorted(zip(failed["method"], failed["seed"])) == [
        ("dpq", 1), ("scalar_quant", 0), ("scalar_quant", 1), ("scalar_quant", 2),
    ]  # fmt: skip
    assert "4 not finished (4 FAILED)" in stdout
    assert "3 FAILED for a budget below the method's floor (not reachable, 1 cell(s))" in stdout
    section = stdout.split("not reachable (the method cannot reach the budget")[1]
    assert (
        "toy / gmf / learned_quant / budget=0.05 / bce: not reachable (min 7.8 %), 3 run(s)"
        in section
    )
    mixed = [line for line in stdout.splitlines() if line.startswith("| scalar_quant")]
    assert mixed and "not reachable" not in mixed[0] and "3 failed" in mixed[0]
    runs = pd.read_csv(out / "runs.csv")  # nothing hidden: the runs stay FAILED with their floor
    lq = runs[(runs["method"] == "learned_quant") & (runs["status"] == "FAILED")]
    assert len(lq) == 3 and set(lq[record.BUDGET_FLOOR]) == {FLOOR}


def test_plots_skip_it(made: tuple[Path, str]) -> None:
    out, stdout = made
    assert (out / "plots" / "quality_vs_size__toy__gmf.png").is_file()
    assert "plot for" not in stdout  # no plot was skipped for an error


def test_mlflow_tag_is_read_as_the_floor() -> None:
    """Runs read from MLflow carry the floor as a tag (text): the same cell, the same verdict."""
    from recbench.report.load import make_row, to_frame
    from recbench.report.tables import make_report

    rows = []
    for seed in range(2):
        tags = {"dataset": "toy", "model": "gmf", "method": "mixed_dim", "task": "ranking",
                "seed": str(seed), "loss": "bce", "budget": "0.05", "config_hash": f"m{seed}",
                "cell_hash": "c1", record.BUDGET_FLOOR: "0.12", "error": "method.budget=..."}  # fmt: skip
        rows.append(make_row(f"r{seed}", "", "toy", "FAILED", pd.Timestamp(0), tags, {}, {}))
    report = make_report(to_frame(rows))
    assert report.unfinished.empty and len(report.unreachable) == 2
    (table,) = report.tables
    assert list(table.floors.values()) == [0.12]
    assert unreachable_text(0.12) == "not reachable (min 12 %)"


def test_rows_without_a_finished_run_sort_by_the_budget_asked() -> None:
    """Unreachable rows have no size: ordered as text, "budget=0.05" came before "budget=0.1"."""
    from recbench.report.load import make_row, to_frame
    from recbench.report.tables import make_report, requested_size

    assert requested_size("budget=0.05") == pytest.approx(5.0)
    assert requested_size("bits=4, budget=0.1") == pytest.approx(10.0)
    assert math.isnan(requested_size("bits=4")) and math.isnan(requested_size("budget=abc"))
    rows = []
    for i, budget in enumerate(["0.05", "0.1"]):
        tags = {"dataset": "toy", "model": "gmf", "method": "mixed_dim", "task": "ranking",
                "seed": "0", "loss": "bce", "budget": budget, "config_hash": f"m{i}",
                "cell_hash": f"c{i}", record.BUDGET_FLOOR: "0.12", "error": "method.budget=..."}  # fmt: skip
        rows.append(make_row(f"r{i}", "", "toy", "FAILED", pd.Timestamp(0), tags, {}, {}))
    (table,) = make_report(to_frame(rows)).tables
    assert [row["setting"] for row in table.rows] == ["budget=0.1", "budget=0.05"]
