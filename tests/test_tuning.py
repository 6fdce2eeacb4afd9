"""Tuning (``+tune=default``): the sweeper optimises the validation metric in the right direction,
the test split is never read by a tuning trial (a spy on every evaluator raises if it is), the best
trial becomes a ``+tuned=`` config file with a trials table, reports leave tuning trials out, and
every preset pins its own training settings so changing the defaults cannot change its results."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import recbench.config  # noqa: F401 - registers the schema
from recbench.errors import ConfigError
from recbench.tuning import check_tuning_config, direction, objective, tuned_name
from tests.conftest import CONF, ROOT

TINY = ["dataset.loader.num_users=120", "dataset.loader.num_items=60", "train.epochs=2"]

#: Runs recbench.run with every evaluator's test-split access replaced by an error.
SPY = """
import sys
import recbench.engine.evaluators.full as ev
import recbench.engine.evaluators.rating as ra
import recbench.engine.evaluators.sampled as sa

def guarded(original):
    def evaluate(self, model, part, *args, **kwargs):
        if part == "test":
            raise AssertionError("TEST SPLIT READ")
        return original(self, model, part, *args, **kwargs)
    return evaluate

def popularity(self, item_counts, part):
    raise AssertionError("TEST SPLIT READ (popularity)")

for cls in (ev.RankingEvaluator, ra.RatingEvaluator, sa.SampledEvaluator):
    cls.evaluate = guarded(cls.evaluate)
    if hasattr(cls, "ranks"):
        cls.ranks = guarded(cls.ranks)
ev.RankingEvaluator.popularity = popularity
sa.SampledEvaluator.popularity = popularity
sys.argv = ["recbench.run", *sys.argv[1:]]
import runpy
runpy.run_module("recbench.run", run_name="__main__", alter_sys=True)  # as `python -m recbench.run`
"""


def spied_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", SPY, *args, "tracking=none"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def composed(overrides: list[str]):  # noqa: ANN201
    if any(o.startswith("+tune=") for o in overrides):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the `tune` extra
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_direction_follows_the_metric() -> None:
    assert direction("ranking") == "maximize"
    assert direction("sequential", "hr_at_10") == "maximize"
    assert direction("rating") == "minimize"
    assert direction("rating", "mae") == "minimize"
    ranking = composed(["+tune=default"])
    rating = composed(["+tune=default", "model=dot_bias"])
    assert OmegaConf.select(ranking, "hydra.sweeper.direction") == "maximize"
    assert OmegaConf.select(rating, "hydra.sweeper.direction") == "minimize"
    assert OmegaConf.select(ranking, "hydra.sweeper.sampler.seed") == 0
    assert ranking.eval.test is False and ranking.stage == "tune"


def test_objective_is_the_validation_metric_never_test() -> None:
    cfg = composed(["model=dot_bias"])
    assert objective(cfg, {"val/rmse": 0.9, "test/rmse": 0.1}) == 0.9
    cfg = composed(["train.monitor=hr_at_10"])
    assert objective(cfg, {"val/hr_at_10": 0.3, "val/ndcg_at_10": 0.2, "test/hr_at_10": 1.0}) == 0.3
    with pytest.raises(ConfigError, match="val/ndcg_at_10"):
        objective(composed([]), {"test/ndcg_at_10": 0.5})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval.test=true"], "must not evaluate the test split"),
        (["hydra.sweeper.direction=minimize"], "must be maximized"),
        (["model=dot_bias", "hydra.sweeper.direction=maximize"], "must be minimized"),
        (["+hydra.sweeper.params.method='full,dpq'"], "method is swept"),
    ],
)
def test_bad_tuning_configs_are_refused(overrides: list[str], expected: str) -> None:
    check_tuning_config(composed(["+tune=default"]))  # the shipped config passes
    with pytest.raises(ConfigError, match=expected):
        check_tuning_config(composed(["+tune=default", *overrides]))


def test_tuned_names() -> None:
    assert tuned_name(composed(["dataset=ml-100k", "model=gmf", "method=dpq"])) == "ml-100k_gmf_dpq"
    assert (
        tuned_name(composed(["model=dot_bias", "task=ranking"]))
        == "synthetic_dot_bias_full_ranking"
    )
    assert tuned_name(composed(["model=dot_bias"])) == "synthetic_dot_bias_full"
    assert tuned_name(composed(["method=qr", "+method.budget=0.25"])) == "synthetic_gmf_qr_b0.25"


def test_tuning_sweep_never_reads_test_data_and_writes_the_best_trial(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the `tune` extra
    # control: the spy does catch a normal run's test evaluation
    proc = spied_run([*TINY, f"hydra.run.dir={tmp_path / 'plain'}"], tmp_path)
    assert proc.returncode != 0 and "TEST SPLIT READ" in proc.stderr

    sweep, out = tmp_path / "sweep", tmp_path / "tuned"
    proc = spied_run(
        ["-m", "+tune=default", *TINY, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}",
         f"hydra.callbacks.tuned_writer.out_dir={out}", "train.batch_size=choice(256,512)"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TEST SPLIT READ" not in proc.stdout + proc.stderr
    assert "recbench sweep: 3 FINISHED" in proc.stdout

    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 3
    values = []
    for record in records:
        assert record["status"] == "FINISHED" and record["stage"] == "tune"
        assert not [k for k in record["metrics"] if k.startswith(("test/", "popularity/"))]
        values.append(record["metrics"]["best/ndcg_at_10"])
    assert not list(sweep.glob("*/serving"))

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(values))  # maximised, and it is val NDCG

    tuned = out / "synthetic_gmf_full.yaml"
    text = tuned.read_text()
    assert text.startswith("# @package _global_") and "test data not read" in text
    train = yaml.safe_load(text)["train"]
    for key, value in results["best_params"].items():
        assert train[key.split(".", 1)[1]] == value
    assert train["epochs"] == 2 and train["patience"] == 10 and train["loss"] == "bce"
    # the header says how to rerun the study: the command line's search-space override included
    header = [line for line in text.splitlines() if line.startswith("#")]
    tuned_by = next(line for line in header if "tuned by:" in line)
    assert "'train.batch_size=choice(256,512)'" in tuned_by and "train.lr=" not in tuned_by
    space = next(line for line in header if "search space:" in line)
    assert "train.batch_size=choice(256,512);" in space
    assert "train.lr=tag(log, interval(0.0005, 0.02))" in space
    with (out / "synthetic_gmf_full.trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["FINISHED"] * 3
    assert {r["train.batch_size"] for r in rows} <= {"256", "512"}  # the override was searched
    assert sorted(float(r["objective"]) for r in rows) == pytest.approx(sorted(values))
    assert {"train.lr", "train.batch_size", "train.num_negatives", "train.weight_decay"} <= set(
        rows[0]
    )

    # the CLI rewrites the same file from the finished sweep
    again = subprocess.run(
        [sys.executable, "-m", "recbench.tuning", str(sweep), "--out", str(tmp_path / "again")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    rewritten = (tmp_path / "again" / "synthetic_gmf_full.yaml").read_text()
    assert yaml.safe_load(rewritten)["train"] == train
    assert space in rewritten.splitlines()  # read back from the sweep folder's search_space.yaml


def test_tuning_cli_needs_a_finished_sweep(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "recbench.tuning", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("recbench: error:") and "optimization_results" in proc.stderr
    )


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "tuned").glob("*.yaml")))
def test_tuned_files_override_the_training_settings(name: str) -> None:
    dataset, model = name.split("_")[0], "dot_bias" if "_dot_bias_" in name else name.split("_")[1]
    task = ["task=ranking"] if name.endswith("_ranking") else []
    cfg = composed([f"dataset={dataset}", f"model={model}", *task, f"+tuned={name}"])
    written = yaml.safe_load((CONF / "tuned" / f"{name}.yaml").read_text())["train"]
    assert {"lr", "batch_size", "epochs", "patience"} <= set(written)
    for key, value in written.items():
        assert cfg.train[key] == value, key


def test_reports_leave_tuning_trials_out(tmp_path: Path) -> None:
    from recbench.report.cli import main as report

    runs = tmp_path / "runs"
    common = {"status": "FINISHED", "dataset": "toy", "model": "gmf", "method": "full",
              "task": "ranking", "seed": "0", "loss": "bce"}  # fmt: skip
    for folder, stage, metrics in (
        (
            "final",
            "run",
            {"test/hr_at_10": 0.5, "test/ndcg_at_10": 0.3, "size/fraction_of_full": 1.0},
        ),
        ("trial", "tune", {"val/hr_at_10": 0.9, "val/ndcg_at_10": 0.8}),
    ):
        (runs / folder).mkdir(parents=True)
        record = {**common, "stage": stage, "config_hash": folder, "metrics": metrics}
        (runs / folder / "metrics.json").write_text(json.dumps(record))
    out = tmp_path / "reports"
    assert (
        report(
            ["--runs-dir", str(runs), "--out", str(out), "--name", "r", "--no-plots", "--no-mlflow"]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "r" / "runs.csv").open()))
    assert [r["stage"] for r in rows] == ["run"]


def _train_keys(preset: str) -> set[str]:
    """Training keys a preset sets itself or through the presets it builds on."""
    raw = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())
    keys = set((raw.get("train") or {}).keys())
    for entry in raw.get("defaults") or []:
        if isinstance(entry, str) and (CONF / "experiment" / f"{entry}.yaml").is_file():
            keys |= _train_keys(entry)
    return keys


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_preset_pins_its_training_settings(preset: str) -> None:
    """So its published numbers do not move when a backbone's default training changes."""
    keys = _train_keys(preset)
    assert {"epochs", "batch_size", "lr", "weight_decay", "patience"} <= keys, preset
    cfg = composed([f"+experiment={preset}"])
    if cfg.task != "rating" and cfg.train.loss != "ce":
        assert "num_negatives" in keys, preset
