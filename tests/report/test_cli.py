"""``python -m recbench.report`` end to end on a tiny MLflow store of fake runs: the table numbers
are the hand-computed seed means/stds/intervals, compressed methods are marked only where the
paired test over >= 3 seeds says so (p-values checked against the closed-form t distribution with
2 degrees of freedom), the failed run is listed, plots are real PNGs, and the report is logged back
to MLflow; user mistakes end with one line and exit code 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recbench.report.cli import main
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"

# (experiment, dataset, model, method, task, seeds -> metrics); see the hand computations below.
RANKING = {
    ("gmf", "full"): {"hr": [0.50, 0.52, 0.54], "ndcg": [0.30, 0.31, 0.32], "size": 1.0},
    ("gmf", "dpq"): {"hr": [0.53, 0.54, 0.55], "ndcg": [0.28, 0.29, 0.30], "size": 0.05},
    ("neumf", "full"): {"hr": [0.60, 0.62, 0.64], "ndcg": [0.40, 0.40, 0.40], "size": 1.0},
    ("neumf", "dpq"): {"hr": [0.66, 0.67, 0.69], "ndcg": [0.40, 0.40, 0.40], "size": 0.04},
}
RATING = {
    ("dot_bias", "full"): {"rmse": [0.90, 0.92], "mae": [0.70, 0.72], "size": 1.0},
    ("dot_bias", "dpq"): {"rmse": [0.89, 0.91], "mae": [0.73, 0.75], "size": 0.1},
}


def _log_run(client, experiment_id: str, tags: dict, params: dict, metrics: dict,
             history: list[float], status: str = "FINISHED") -> None:  # fmt: skip
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, run_name=f"{tags['model']}-{tags['method']}", tags=tags)
    rid = run.info.run_id
    items = [Metric(k, v, 0, 0) for k, v in metrics.items()]
    items += [Metric("train/loss", v, 0, epoch) for epoch, v in enumerate(history, start=1)]
    client.log_batch(rid, metrics=items, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(rid, status)


def build_store(db: Path) -> None:
    """Fake runs logged with MLflow directly, tagged as recbench.run tags them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    art = db.parent / "artifacts"
    for exp, dataset, table, task, loss in (
        ("toy", "toy", RANKING, "ranking", "bce"),
        ("toyrate", "toyrate", RATING, "rating", "mse"),
    ):
        eid = client.create_experiment(exp, artifact_location=(art / exp).as_uri())
        for (model, method), values in table.items():
            n = len(values.get("hr", values.get("rmse")))
            for seed in range(n):
                tags = {
                    "dataset": dataset,
                    "model": model,
                    "method": method,
                    "user_method": "",
                    "task": task,
                    "seed": str(seed),
                    "loss": loss,
                    "config_hash": f"{dataset}{model}{method}{seed}",
                    "run_dir": "",
                    "experiment": "",
                    "budget": "0.25" if method == "dpq" else "",
                }
                if model != "neumf":  # neumf runs predate the tag: derived from params
                    tags["eval_protocol"] = "full"
                params = {
                    "method.init_std": 0.01,
                    "train.epochs": 3,
                    "eval.protocol": "full",
                    "train.loss": loss,
                }
                metrics = {"size/fraction_of_full": values["size"]}
                for key, name in (
                    ("hr", "hr_at_10"),
                    ("ndcg", "ndcg_at_10"),
                    ("rmse", "rmse"),
                    ("mae", "mae"),
                ):
                    if key in values:
                        metrics[f"test/{name}"] = values[key][seed]
                _log_run(
                    client,
                    eid,
                    tags,
                    params,
                    metrics,
                    [1.0 - 0.1 * e - 0.01 * seed for e in range(3)],
                )
        if exp == "toy":  # one failed neumf/dpq seed, with the same config as the others
            tags = {
                "dataset": "toy",
                "model": "neumf",
                "method": "dpq",
                "user_method": "",
                "task": "ranking",
                "seed": "3",
                "loss": "bce",
                "config_hash": "failedhash",
                "budget": "0.25",
                "error": "RuntimeError: CUDA out of memory",
            }
            _log_run(client, eid, tags, params, {}, [0.9], status="FAILED")


def report(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "recbench.report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("store")
    build_store(tmp / "mlflow.db")
    return tmp


@pytest.fixture(scope="module")
def full_report(store: Path) -> tuple[subprocess.CompletedProcess, Path]:
    proc = report([
        "--uri", f"sqlite:///{store / 'mlflow.db'}", "--out", str(store / "reports"),
        "--name", "paper", "--popularity", "synthetic",
        "--popularity-override", "dataset.loader.num_users=60",
        "--popularity-override", "dataset.loader.num_items=40",
    ])  # fmt: skip
    return proc, store / "reports" / "paper"


def test_report_runs_cleanly(full_report) -> None:
    proc, out = full_report
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-3000:]  # no MLflow/alembic chatter
    assert "17 runs" in proc.stdout and "16 finished" in proc.stdout
    assert "1 not finished (1 FAILED)" in proc.stdout
    assert "CUDA out of memory" in proc.stdout
    assert "not pooled" not in proc.stdout and "warning" not in proc.stdout
    assert "logged to MLflow experiment 'recbench-reports', run report-paper" in proc.stdout
    for name in ("table.md", "table.tex", "table.csv", "aggregate.csv", "runs.csv", "failed.csv"):
        assert (out / name).stat().st_size > 0, name


def t2_two_sided(t: float) -> float:
    """P(|T| > |t|) for Student's t with 2 degrees of freedom: CDF = 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


T2_975 = 0.95 * math.sqrt(2 / (1 - 0.95**2))  # the t(2) quantile at 0.975 from the same CDF


def test_table_numbers_are_seed_means_and_stds(full_report) -> None:
    _, out = full_report
    table = pd.read_csv(out / "table.csv")
    toy = table[table["dataset"] == "toy"].set_index("method")
    assert toy.loc["full", "gmf HR@10 mean"] == pytest.approx(0.52)
    assert toy.loc["full", "gmf HR@10 std"] == pytest.approx(0.02)
    half = T2_975 * 0.02 / math.sqrt(3)
    assert toy.loc["full", "gmf HR@10 ci_low"] == pytest.approx(0.52 - half)
    assert toy.loc["full", "gmf HR@10 ci_high"] == pytest.approx(0.52 + half)
    assert toy.loc["dpq", "gmf HR@10 mean"] == pytest.approx(0.54)
    assert toy.loc["dpq", "gmf NDCG@10 std"] == pytest.approx(0.01)
    assert toy.loc["dpq", "gmf Size % mean"] == pytest.approx(5.0)
    assert toy.loc["dpq", "neumf HR@10 std"] == pytest.approx((0.0007 / 3) ** 0.5)  # .66, .67, .69
    assert toy.loc["dpq", "neumf n"] == 3 and toy.loc["dpq", "neumf failed"] == 1
    assert toy.loc["full", "neumf n"] == 3 and toy.loc["full", "neumf failed"] == 0
    # gmf HR: differences .03, .02, .01 (mean .02, sd .01): t = .02 / (.01 / sqrt 3) -> p = .074;
    # non-inferiority at 1 % of the full mean .52: t = (.02 + .0052) / (.01 / sqrt 3) -> p = .024
    se = 0.01 / math.sqrt(3)
    assert toy.loc["dpq", "gmf HR@10 p_value"] == pytest.approx(t2_two_sided(0.02 / se))
    assert toy.loc["dpq", "gmf HR@10 p_noninferior"] == pytest.approx(
        t2_two_sided((0.0252) / se) / 2
    )
    assert toy.loc["dpq", "gmf HR@10 verdict"] == "reaches"
    assert bool(toy.loc["dpq", "gmf HR@10 reaches_full"]) and not bool(
        toy.loc["dpq", "gmf HR@10 beats_full"]
    )
    # gmf NDCG: every seed .02 below full: significantly worse, no mark
    assert toy.loc["dpq", "gmf NDCG@10 verdict"] == "worse"
    assert not bool(toy.loc["dpq", "gmf NDCG@10 reaches_full"])
    # neumf HR: differences .06, .05, .05 (mean .05333, sd .005774): beats full
    assert toy.loc["dpq", "neumf HR@10 p_value"] == pytest.approx(
        t2_two_sided((0.16 / 3) / (0.0057735 / math.sqrt(3))), rel=1e-3
    )
    assert toy.loc["dpq", "neumf HR@10 verdict"] == "beats" and bool(
        toy.loc["dpq", "neumf HR@10 beats_full"]
    )
    # neumf NDCG: identical to full on every seed: within the margin for sure
    assert toy.loc["dpq", "neumf NDCG@10 verdict"] == "reaches"
    assert toy.loc["dpq", "neumf HR@10 n_paired"] == 3
    assert not bool(toy.loc["full", "gmf HR@10 reaches_full"])
    assert toy.loc["dpq", "label"] == "dpq (budget=0.25)"
    rate = table[table["dataset"] == "toyrate"].set_index("method")
    assert rate.loc["dpq", "dot_bias RMSE mean"] == pytest.approx(0.90)
    # two seeds: better mean RMSE (.90 < .91) but never a mark below 3 paired seeds
    assert rate.loc["dpq", "dot_bias RMSE verdict"] == "too few pairs"
    assert not bool(rate.loc["dpq", "dot_bias RMSE reaches_full"])
    assert math.isnan(rate.loc["dpq", "dot_bias RMSE p_value"])

    md = (out / "table.md").read_text()
    ci = f"[{0.54 - T2_975 * se:.4f}, {0.54 + T2_975 * se:.4f}]"
    assert f"| dpq (budget=0.25) | 0.5400 ± 0.0100 {ci}* | 0.2900 ± 0.0100 [" in md
    assert (
        "0.6733 ± 0.0153 [0.6354, 0.7113]** | 0.4000 ± 0.0000 [0.4000, 0.4000]* | 4.0 | 3 (+1 failed) |"
        in md
    )
    assert "| full | 0.5200 ± 0.0200 [0.4703, 0.5697] | 0.3100 ± 0.0100 [" in md
    assert "### toyrate — rating, full evaluation" in md and "dot_bias RMSE" in md
    assert "0.9000 ± 0.0141 [0.7729, 1.0271] |" in md  # no mark at n = 2
    assert "non-inferiority" in md
    tex = (out / "table.tex").read_text()
    assert r"$0.5400 \pm 0.0100$\dag" in tex and r"$0.6733 \pm 0.0153$\ddag" in tex
    assert r"\multicolumn{4}{c}{neumf}" in tex and r"dot\_bias" in tex


def test_failed_runs_listed(full_report) -> None:
    _, out = full_report
    failed = pd.read_csv(out / "failed.csv")
    assert len(failed) == 1
    row = failed.iloc[0]
    assert (row["model"], row["method"], row["seed"], row["status"]) == (
        "neumf",
        "dpq",
        3,
        "FAILED",
    )
    assert "CUDA out of memory" in row["error"]


def test_plots_are_pngs(full_report) -> None:
    _, out = full_report
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == sorted([
        "quality_vs_size__toy__gmf.png", "quality_vs_size__toy__neumf.png",
        "quality_vs_size__toyrate__dot_bias.png", "train_loss__toy__gmf.png",
        "train_loss__toy__neumf.png", "train_loss__toyrate__dot_bias.png",
        "popularity__synthetic.png",
    ])  # fmt: skip
    for name in plots:
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, name


def test_report_logged_to_mlflow(full_report, store: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("recbench-reports")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "report-paper" and run.info.status == "FINISHED"
    assert run.data.tags["report.failed"] == "1"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"table.md", "table.tex", "table.csv", "failed.csv", "plots"} <= names


def test_no_matching_runs_is_one_line_exit_2(store: Path) -> None:
    proc = report(["--uri", f"sqlite:///{store / 'mlflow.db'}", "--out", str(store / "r2"),
                   "--filter", "tags.model = 'nope'", "--no-mlflow"])  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recbench report: error: no runs match")
    assert "--filter" in lines[0]


def test_filter_and_experiment_in_process(store: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["--uri", f"sqlite:///{store / 'mlflow.db'}", "--out", str(store / "r3"),
                 "--experiment", "toy", "--filter", "tags.model = 'gmf'", "--no-plots",
                 "--no-mlflow"])  # fmt: skip
    assert code == 0
    table = pd.read_csv(store / "r3" / "toy" / "table.csv")
    assert not any(c.startswith("neumf") for c in table.columns)
    assert "gmf HR@10 mean" in table.columns and set(table["dataset"]) == {"toy"}
    assert "logged to MLflow" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--uri", "sqlite:///{tmp}/missing.db"], "no MLflow store at"),
        (
            ["--uri", "sqlite:///{store}/mlflow.db", "--experiment", "nope"],
            "no experiment named 'nope'",
        ),
        (["--uri", "sqlite:///{store}/mlflow.db", "--filter", "tags.model ~ 1"], "bad --filter"),
        (["--uri", "sqlite:///{tmp}/corrupt.db"], "cannot read the MLflow store"),
        (["--runs-dir", "{tmp}/nowhere"], "no run folder"),
    ],
)
def test_user_errors_in_process(args, expected, store: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    (tmp_path / "corrupt.db").write_text("not a database")
    args = [a.format(tmp=tmp_path, store=store) for a in args]
    assert main([*args, "--out", str(tmp_path / "r"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recbench report: error: ") and expected in err[0], (
        err
    )


def test_runs_dir_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """metrics.json folders (tracking=none) give the same table, history included."""
    root = tmp_path / "multirun"
    for i, (method, hr) in enumerate([("full", 0.4), ("full", 0.6), ("dpq", 0.5), ("dpq", None)]):
        run = root / f"{i}_gmf_{method}_s{i}"
        run.mkdir(parents=True)
        ident = {
            "dataset": "toy",
            "model": "gmf",
            "method": method,
            "user_method": "",
            "task": "ranking",
            "seed": str(i),
            "loss": "bce",
            "config_hash": f"h{i}",
            "preset": "p1",
        }
        if hr is None:
            record = {"status": "FAILED", "error": "ValueError: bad", **ident}
        else:
            record = {
                "status": "FINISHED",
                **ident,
                "metrics": {
                    "test/hr_at_10": hr,
                    "test/ndcg_at_10": hr / 2,
                    "size/fraction_of_full": 1.0 if method == "full" else 0.1,
                },
                "history": [{"epoch": 1, "train/loss": 0.7}, {"epoch": 2, "train/loss": 0.5}],
            }
        (run / "metrics.json").write_text(json.dumps(record))
        (run / "config.yaml").write_text(f"method:\n  _target_: x.{method}\n  init_std: 0.01\n")
    assert main(["--runs-dir", str(root), "--out", str(tmp_path / "reports")]) == 0
    out = tmp_path / "reports" / "multirun"
    table = pd.read_csv(out / "table.csv").set_index("method")
    assert table.loc["full", "gmf HR@10 mean"] == pytest.approx(0.5)
    assert table.loc["full", "gmf HR@10 std"] == pytest.approx(0.02**0.5)
    assert table.loc["dpq", "gmf HR@10 mean"] == pytest.approx(0.5)
    assert not bool(table.loc["dpq", "gmf HR@10 reaches_full"])  # one seed, none shared with full
    assert table.loc["dpq", "gmf HR@10 verdict"] == "too few pairs"
    assert len(pd.read_csv(out / "failed.csv")) == 1
    assert (out / "plots" / "train_loss__toy__gmf.png").read_bytes().startswith(PNG)
    stdout = capsys.readouterr().out
    assert "logged to MLflow" not in stdout  # run folders: MLflow is off unless --uri is given
    assert "1 not finished (1 FAILED)" in stdout
    # --experiment selects run folders by the preset they ran under
    reports = str(tmp_path / "reports")
    assert (
        main(["--runs-dir", str(root), "--out", reports, "--experiment", "p1", "--name", "p"]) == 0
    )
    assert (
        main(["--runs-dir", str(root), "--out", reports, "--experiment", "p2", "--name", "q"]) == 2
    )
    assert "no runs match in experiment(s) p2" in capsys.readouterr().err
