"""The command line end to end: a tiny real run recorded to a temporary MLflow store, and bad input
that must fail with one line, a non-zero exit and no run left FINISHED."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recbench.checks import preflight
from tests.conftest import ROOT

TINY = [
    "dataset.loader.num_users=120",
    "dataset.loader.num_items=60",
    "train.epochs=2",
    "train.progress=false",
]


def run_cli(
    args: list[str], tmp_path: Path, timeout: int = 240, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "recbench.run",
        *flags,
        f"tracking.uri={store}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def mlflow_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("recbench: error:")]


def test_default_run_records_everything(tmp_path: Path) -> None:
    proc = run_cli(TINY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HR@10" in proc.stdout and "popularity" in proc.stdout and "serving bits" in proc.stdout
    assert (
        "Creating initial MLflow database tables" not in proc.stdout + proc.stderr
    )  # no library noise
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "FINISHED"
    assert (tmp_path / "run" / "config.yaml").exists()
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for key in (
        "test/hr_at_10",
        "test/ndcg_at_10",
        "test/mrr",
        "size/serving_bits",
        "size/fraction_of_full",
        "train/loss",
        "val/ndcg_at_10",
        "time/train_seconds",
        "popularity/hr_at_10",
    ):
        assert key in m, key
    assert m["size/fraction_of_full"] == pytest.approx(1.0)
    assert m["test/hr_at_10"] == pytest.approx(record["metrics"]["test/hr_at_10"])
    tags = run.data.tags
    assert tags["dataset"] == "synthetic" and tags["model"] == "gmf" and tags["method"] == "full"
    assert tags["seed"] == "0" and len(tags["config_hash"]) == 16
    # the report recomputes the run's cell from what was recorded, in MLflow and in the run folder
    from recbench.report import FolderSource, MlflowSource
    from recbench.report.tables import make_report

    for source in (
        MlflowSource(f"sqlite:///{tmp_path / 'mlflow.db'}"),
        FolderSource(tmp_path / "run"),
    ):
        assert make_report(source.runs()).finished["cell"].tolist() == [tags["cell_hash"]]
    assert tags["tie_break"] == "file" and record["tie_break"] == "file"
    assert run.data.params["train.epochs"] == "2"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [h.step for h in history] == [1, 2]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml"} <= names
    assert_mlflow_browsable(client, run)


def test_recorded_size_is_against_the_reference_dimension(tmp_path: Path) -> None:
    """A full GMF at d = 16 records about 25 % of the d = 64 full model, not 100 % (issue 13)."""
    proc = run_cli([*TINY, "model.embedding_dim=16", "tracking=none", "eval.popularity_baseline=false",
                    "eval.serving_artifact=false"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    m, ids = record["metrics"], record["data"]["users"] + record["data"]["items"]
    assert m["size/serving_bits"] == 32 * (ids * 16 + 17)  # tables + GMF's output layer (d + 1)
    assert m["size/full_bits"] == 32 * (ids * 64 + 65) and m["size/reference_dim"] == 64
    assert m["size/fraction_of_full"] == pytest.approx(0.25, abs=0.005)
    assert "25." in proc.stdout and "of the full float32 model at d = 64" in proc.stdout


def assert_mlflow_browsable(client: Any, run: Any) -> None:
    """What the MLflow UI shows (issue 15): an informative name, clean params with the chosen
    options, per-epoch validation curves and the best epoch as best/*, MLflow's own source tags,
    the dataset as an input, and an experiment that opens in the classic ML view."""
    tags, params = run.data.tags, run.data.params
    assert re.fullmatch(r"synthetic-gmf-full-s0-[0-9a-f]{4}", run.info.run_name), run.info.run_name
    assert (params["dataset"], params["model"], params["method"]) == ("synthetic", "gmf", "full")
    noise = [k for k in params if "_target_" in k or "_partial_" in k or k.startswith("tracking.")]
    assert noise == [] and "force" not in params and "resume" not in params
    for key in ("val/ndcg_at_10", "val/hr_at_10"):  # one point per epoch, none at step 0
        assert [h.step for h in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    assert {"best/ndcg_at_10", "best/hr_at_10"} <= set(run.data.metrics)
    record = json.loads(Path(tags["run_dir"], "metrics.json").read_text())["metrics"]
    assert record["best/ndcg_at_10"] == pytest.approx(run.data.metrics["best/ndcg_at_10"])
    assert tags["mlflow.source.name"] == "recbench.run" and tags["mlflow.source.type"] == "LOCAL"
    assert "mlflow.user" in tags and "sweep_id" not in tags  # a single run is no sweep
    if tags["git_commit"]:
        assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "synthetic" and len(data.dataset.digest) == 12
    assert (
        json.loads(data.dataset.profile)
        == json.loads(Path(tags["run_dir"], "metrics.json").read_text())["data"]
    )
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "test/" in experiment.tags["mlflow.note.content"]
    view = json.loads(experiment.tags["mlflow.sharedViewState.recbench"])
    assert "metrics.`test/hr_at_10`" in view["selectedColumns"]


def test_params_leave_out_plumbing_but_keep_the_cell() -> None:
    """Params drop Hydra's plumbing and bookkeeping and name the options; the report's cell key
    is the same whether it is computed from them or from the full config (old runs' params)."""
    from recbench.tracking import cell_config, flatten, run_params

    resolved = {
        "seed": 1, "force": False, "tracking": {"uri": "sqlite:///x.db"},
        "method": {"_target_": "a.B", "_partial_": True, "num_buckets": 8},
        "model": {"factory": {"_target_": "a.M", "_partial_": True}, "embedding_dim": 4},
        "dataset": {"name": "d", "categories": {"_target_": "a.C"}}, "user_method": None,
    }  # fmt: skip
    identity = {"dataset": "d", "model": "gmf", "method": "hashing", "user_method": ""}
    params = run_params(resolved, identity)
    assert params == {
        "seed": 1, "method.num_buckets": 8, "model.embedding_dim": 4, "dataset.name": "d",
        "dataset": "d", "model": "gmf", "method": "hashing", "user_method": "",
    }  # fmt: skip
    assert cell_config(params) == cell_config(flatten(resolved))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["method=nope"], "unknown method option 'nope'; choose one of:"),
        (["model=nope"], "unknown model option 'nope'"),
        (["train.epoch=3"], "unknown key 'train.epoch'; did you mean train.epochs?"),
        (
            ["+train.epoch=3"],
            "unknown key 'train.epoch'; did you mean train.epochs?",
        ),  # not ignored
        (["sed=1"], "did you mean seed?"),
        (["method=mgq"], "did you mean method=mgqe?"),
        (["experiment=keras_full"], "use +experiment=keras_full"),
        (["user_method=nope"], "unknown user_method option 'nope'"),
        (["user_method=qr", "user_method.num_buckets=0"], "user_method.num_buckets=0 must be"),
        (["user_method=qr", "user_method.init_sd=1"], "did you mean user_method.init_std?"),
        (["train.epochs=many"], "train.epochs=many is not a valid integer"),
        (["method.init_sd=0.1"], "unknown key 'method.init_sd'"),
        (["train.loss=mse"], "train.loss=mse does not fit task=ranking"),
        (["train.lr=0"], "train.lr=0"),
        (["-m", "method=full,nope"], "unknown method option 'nope'"),
        (
            ["dataset.tie_break=time"],
            "dataset.tie_break=time is unknown; choose one of file, item, random",
        ),
        (
            ["train.fused_vq=sometimes"],
            "train.fused_vq=sometimes is unknown; choose true, false or auto",
        ),
    ],
)
def test_preflight_messages(args: list[str], expected: str) -> None:
    problem = preflight(args)
    assert problem is not None and expected in problem
    assert "\n" not in problem


def test_preflight_accepts_good_command_lines() -> None:
    assert preflight(["model=dot_bias", "seed=3", "--cfg", "job"]) is None
    assert preflight(["-m", "seed=0,1", "method=full"]) is None
    assert preflight(["method=qr", "user_method=qr", "user_method.num_buckets=16"]) is None
    assert preflight(["+experiment=keras_qr_md"]) is None
    assert preflight(["method=dpq", "train.fused_vq=false"]) is None
    assert preflight(["method=dpq", "train.fused_vq=true"]) is None


def test_typo_hints_never_suggest_adding_the_typo() -> None:
    for args in (["train.epoch=3"], ["method.init_sd=1"], ["eval.kk=3"]):
        problem = preflight(args)
        assert problem is not None and "+" not in problem.split(";")[1], problem


def test_user_method_is_a_group_whose_default_is_the_method() -> None:
    from hydra import compose, initialize_config_dir

    from recbench.checks import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert compose("config").user_method is None  # same as method
        cfg = compose("config", overrides=["method=mixed_dim", "user_method=qr"])
    assert cfg.user_method._target_.endswith("QuotientRemainderEmbedding")
    assert cfg.method._target_.endswith("MixedDimEmbedding")


def test_help_lists_groups_as_typed() -> None:
    proc = subprocess.run([sys.executable, "-m", "recbench.run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0
    assert "user_method=" in proc.stdout and "+experiment=" in proc.stdout
    assert "\nexperiment:" not in proc.stdout  # Hydra's own list would omit the +


def test_bad_option_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    proc = run_cli(["method=nope"], tmp_path)
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "Traceback" not in proc.stderr
    assert mlflow_runs(tmp_path) == []


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "put"),
        ("1\t1\t5\t10\n1\t2\tx\t11\n", "line 2"),
        ("1\t1\t5\t10\n1\t2\t7\t11\n", "line 2"),
    ],
    ids=["missing-file", "malformed-line", "rating-out-of-range"],
)
def test_data_errors_fail_cleanly_and_record_failed(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    root = tmp_path / "data"
    if content is not None:
        write(root / "ml-100k" / "u.data", content)
    else:
        root.mkdir()
    proc = run_cli(["dataset=ml-100k", f"dataset.root={root}", "train.progress=false"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert expected in line and "Traceback" not in proc.stderr
    assert all(r.info.status != "FINISHED" for r in mlflow_runs(tmp_path))
    assert [r.info.status for r in mlflow_runs(tmp_path)] == ["FAILED"]
    assert "error" in mlflow_runs(tmp_path)[0].data.tags


def test_too_few_interactions_reported_or_failed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    lines = [f"{u}\t{i}\t4\t{t}" for t, (u, i) in enumerate([(1, 1), (1, 2), (2, 1), (2, 3)])]
    write(root / "ml-100k" / "u.data", "\n".join(lines) + "\n")
    proc = run_cli(["dataset=ml-100k", f"dataset.root={root}", "train.progress=false"], tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "no user has the 3 interactions" in line


def run_sweep(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return run_cli([f"hydra.sweep.dir={tmp_path / 'sweep'}", *args], tmp_path, flags=("-m",))


def test_sweep_isolates_failures_and_resumes(tmp_path: Path) -> None:
    grid = [*TINY[2:], "dataset.loader.num_users=60", "dataset.loader.num_items=3,40"]
    proc = run_sweep(grid, tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]  # a sweep with a FAILED run exits non-zero
    assert "dataset.loader.num_items=3" in proc.stderr  # the failure is named, the sweep went on
    assert "recbench sweep: 1 FAILED, 1 FINISHED" in proc.stdout
    statuses = sorted(r.info.status for r in mlflow_runs(tmp_path))
    assert statuses == ["FAILED", "FINISHED"]
    failed = next(r for r in mlflow_runs(tmp_path) if r.info.status == "FAILED")
    assert "num_items=3" in failed.data.tags["error"]

    again = run_sweep(grid, tmp_path)  # the finished run is skipped, the failed one retried
    assert again.returncode == 1
    assert "skipped, identical run" in again.stdout
    assert "recbench sweep: 1 FAILED, 1 SKIPPED" in again.stdout
    assert sorted(r.info.status for r in mlflow_runs(tmp_path)) == ["FAILED", "FAILED", "FINISHED"]

    forced = run_sweep([*grid[:-1], "dataset.loader.num_items=40", "force=true"], tmp_path)
    assert forced.returncode == 0
    finished = [r for r in mlflow_runs(tmp_path) if r.info.status == "FINISHED"]
    assert len(finished) == 2
    names = [r.info.run_name for r in finished]  # the forced rerun does not repeat the name
    assert len(set(names)) == 2 and all(n.startswith("synthetic-gmf-full-s0-") for n in names)


def test_impossible_budget_names_the_smallest(tmp_path: Path) -> None:
    proc = run_cli([*TINY, "method.budget=0.5"], tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "method.budget=0.5 is impossible" in line
    # still FAILED, with the floor (the full table's 1.0) for the report's "not reachable" cell
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "FAILED" and saved["budget_floor"] == 1.0
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["budget_floor"] == "1.0"


def test_user_method_errors_name_user_method(tmp_path: Path) -> None:
    """A solver error raised while building the user table names the key the user typed."""
    proc = run_cli(
        [*TINY, "method=qr", "user_method=hashing", "user_method.budget=0.001"], tmp_path
    )
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "user_method.budget=0.001 is impossible" in line and " method.budget" not in line


def test_parallel_joblib_sweep_shares_the_store(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    grid = [*TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"]
    proc = run_sweep(grid, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = mlflow_runs(tmp_path)
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    dirs = {r.data.tags["run_dir"] for r in runs}
    assert len(dirs) == 2  # each run in its own folder
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1  # joblib workers share the sweep's id
    assert sorted(r.info.run_name[:-5] for r in runs) == [
        "synthetic-gmf-full-s0",
        "synthetic-gmf-full-s1",
    ]
    # parallel runs print one summary line each (no multi-line blocks to interleave)
    summaries = [
        line for line in proc.stdout.splitlines() if line.startswith("recbench: synthetic")
    ]
    assert len(summaries) == 2 and all(
        "HR@10" in line and "popularity" in line for line in summaries
    )
    assert "  size " not in proc.stdout


def test_slurm_example_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    assert preflight(["-m", "hydra/launcher=slurm_example", "seed=0,1"]) is None
