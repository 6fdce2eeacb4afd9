"""Cells (runs identical but for the seed), run states and code-version warnings, on hand-made
frames and on run folders: the acceptance tests of honest aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recbench.report.cells import assign_cells, hash_seed_choices
from recbench.report.cli import main
from recbench.report.load import to_frame
from recbench.report.tables import LABEL_KEYS, add_labels, make_report, to_markdown
from recbench.tracking import FOLLOWS_SEED, cell_config, cell_hash, digest, flatten

BASE = {
    "train.epochs": "20",
    "train.lr": "0.001",
    "model.embedding_dim": "64",
    "method.init_std": "0.01",
}


def run(method: str, seed: int, hr: float | None = None, status: str = "FINISHED", model: str = "gmf",
        cfg: dict | None = None, **extra: str) -> dict:  # fmt: skip
    """One loaded run; ``cfg`` overrides keys of ``BASE`` (its recorded config)."""
    config = {**BASE, **(cfg or {})}
    return {
        "run_id": f"{model}-{method}-{seed}-{status}-{json.dumps(cfg, sort_keys=True)}-{extra}",
        "status": status, "dataset": "d", "model": model, "method": method, "user_method": "",
        "task": "ranking", "seed": str(seed), "loss": "bce", "config_hash": "", "eval_protocol": "full",
        "budget": "", "knobs": "{}", "start_time": pd.Timestamp(seed, unit="s"),
        "config": json.dumps(config, sort_keys=True),
        **({"test/hr_at_10": hr} if hr is not None else {}), **extra,
    }  # fmt: skip


def report(rows: list[dict]):
    return make_report(to_frame(rows))


def test_runs_differing_in_a_training_knob_are_two_cells() -> None:
    """Three GMF/full runs at lr .001, .001, .01 were one row with n = 3; now two rows, the
    lr named in the row label and in a note, and each compressed cell compared with its own full."""
    rows = [
        run("full", 0, 0.50), run("full", 1, 0.52), run("full", 2, 0.54),
        run("full", 0, 0.10, cfg={"train.lr": "0.01"}),
        run("dpq", 0, 0.51), run("dpq", 1, 0.53), run("dpq", 2, 0.55),
    ]  # fmt: skip
    rep = report(rows)
    agg = rep.aggregated.set_index(["method", "variant"])
    assert agg.loc[("full", "train.lr=0.001"), "n"] == 3
    assert agg.loc[("full", "train.lr=0.001"), "test/hr_at_10 mean"] == pytest.approx(0.52)
    assert agg.loc[("full", "train.lr=0.01"), "n"] == 1
    assert agg.loc[("dpq", ""), "n"] == 3  # one configuration: no variant in its label
    assert agg.loc[("dpq", ""), "test/hr_at_10 full"] == pytest.approx(0.52)  # the lr=.001 full
    assert agg.loc[("dpq", ""), "test/hr_at_10 n_paired"] == 3
    labels = [r["label"] for r in rep.tables[0].rows]
    assert labels == ["full (train.lr=0.001)", "full (train.lr=0.01)", "dpq"]
    (note,) = rep.notes
    assert "2 configurations not pooled (settings differ in train.lr)" in note
    assert "[train.lr=0.001]" in note and "[train.lr=0.01]" in note
    assert "train.lr=0.01" in to_markdown(rep.tables, rep.notes).split("Notes:")[1]


def test_bookkeeping_keys_and_seed_never_split() -> None:
    """Keys that cannot change a result are not part of the recorded cell config at all."""
    flat = flatten({"seed": 3, "preset": "p", "train": {"lr": 0.1, "progress": True, "compile": True},
                    "tracking": {"uri": "x"}, "eval": {"batch_size": 9, "k": 10}, "force": True})  # fmt: skip
    assert cell_config(flat) == {"train.lr": "0.1", "eval.k": "10"}
    a = {
        "seed": 0,
        "preset": "a",
        "train": {"lr": 0.1, "progress": True},
        "method": {"hash_seed": 0},
    }
    b = {
        "seed": 5,
        "preset": "b",
        "train": {"lr": 0.1, "progress": False},
        "method": {"hash_seed": 5},
    }
    assert cell_hash(a) == cell_hash(b)  # hash_seed follows the seed in both
    assert cell_hash(a) != cell_hash({**a, "train": {"lr": 0.2}})
    assert cell_hash(a) != cell_hash({**b, "method": {"hash_seed": 0}})  # seed 5, fixed hash_seed 0


def test_cell_hash_tag_equals_the_reports_cell() -> None:
    """The run-time tag and the report's key are the same function of the recorded config."""
    resolved = {
        "seed": 2,
        "train": {"lr": 0.001, "epochs": 20},
        "method": {"hash_seed": 2, "sizes": [1, 2]},
    }
    recorded = {
        k: v if not isinstance(v, list) else json.dumps(v) for k, v in flatten(resolved).items()
    }
    row = run("hashing", 2, 0.5)
    row["config"] = json.dumps(
        cell_config({k: str(v) for k, v in recorded.items()}), sort_keys=True
    )
    members, _ = assign_cells(add_labels(to_frame([row])), LABEL_KEYS)
    assert members["cell"].tolist() == [cell_hash(resolved)]


def test_hash_seed_follows_or_fixed() -> None:
    fixed = [{"method.hash_seed": "0"}] * 3
    assert [c[0]["method.hash_seed"] for c in hash_seed_choices(fixed, ["0", "1", "2"])] == [
        "0"
    ] * 3
    follows = [{"method.hash_seed": s} for s in "012"]
    assert [c[0]["method.hash_seed"] for c in hash_seed_choices(follows, list("012"))] == [
        FOLLOWS_SEED
    ] * 3
    # a fixed-0 sweep (seeds 1, 2) and a following sweep (seeds 0-2) share the seed-0 run
    mixed = [{"method.hash_seed": v} for v in ("0", "1", "2", "0", "0")]
    choices = hash_seed_choices(mixed, ["0", "1", "2", "1", "2"])
    assert [[d["method.hash_seed"] for d in c] for c in choices] == [
        ["0", FOLLOWS_SEED], [FOLLOWS_SEED], [FOLLOWS_SEED], ["0"], ["0"]]  # fmt: skip
    rows = [run("hashing", s, 0.5, cfg={"method.hash_seed": v})
            for s, v in [(0, "0"), (1, "1"), (2, "2"), (1, "0"), (2, "0")]]  # fmt: skip
    agg = report(rows).aggregated.set_index("variant")
    assert agg.loc["method.hash_seed=${seed}", "n"] == 3
    assert agg.loc["method.hash_seed=0", "n"] == 3
    assert json.loads(agg.loc["method.hash_seed=0", "seeds"]) == ["0", "1", "2"]
    # old runs: hash_seed 0 for every seed -> one cell, not seed 0 apart
    old = report([run("hashing", s, 0.5, cfg={"method.hash_seed": "0"}) for s in range(3)])
    assert old.aggregated["n"].tolist() == [3] and not old.notes


def test_reference_free_compares_methods_tuned_on_their_own() -> None:
    """Per-method tuning gives each method its own lr: by default no full cell shares its
    settings; with reference_free=["train"] the full model at its own tuned lr is the reference."""
    rows = [run("full", s, 0.50 + s / 100) for s in range(3)]
    rows += [run("dpq", s, 0.60 + s / 100, cfg={"train.lr": "0.01"}) for s in range(3)]
    strict = report(rows).aggregated.set_index("method")
    assert strict.loc["dpq", "test/hr_at_10 n_paired"] == 0
    free = make_report(to_frame(rows), reference_free=["train"])
    agg = free.aggregated.set_index("method")
    assert agg.loc["dpq", "test/hr_at_10 n_paired"] == 3
    assert agg.loc["dpq", "test/hr_at_10 diff"] == pytest.approx(0.10)
    assert agg.loc["dpq", "test/hr_at_10 beats_full"]
    assert any("--reference-free" in note for note in free.notes)


def test_hash_seed_following_the_seed_is_one_row() -> None:
    """bloom_hashes with 5 seeds was 5 rows of n = 1 per family: the label listed the hash seed,
    which follows the run seed, as if it were a setting. Now one row per family, n = 3."""
    rows = [
        run("bloom", s, 0.5 + s / 100, cfg={"method.hash_seed": str(s), "method.hash_family": fam},
            knobs=json.dumps({"hash_family": fam, "hash_seed": str(s)}))
        for fam in ("md5", "sha1") for s in range(3)
    ]  # fmt: skip
    rep = report(rows)
    assert sorted(rep.aggregated["n"].tolist()) == [3, 3]
    labels = [r["label"] for r in rep.tables[0].rows]
    assert labels == ["bloom (hash_family=md5)", "bloom (hash_family=sha1)"]


def test_a_seed_counts_once_per_cell() -> None:
    """Two runs of one cell and seed (e.g. recorded under two presets): the latest counts."""
    rows = [run("full", 0, 0.1), run("full", 1, 0.3), {**run("full", 1, 0.5), "run_id": "later",
                                                       "start_time": pd.Timestamp(9, unit="s")}]  # fmt: skip
    rep = report(rows)
    assert rep.aggregated["n"].tolist() == [2] and rep.duplicates == 1
    assert rep.aggregated["test/hr_at_10 mean"].iloc[0] == pytest.approx(0.3)  # (.1 + .5) / 2


def test_mixed_code_versions_warn() -> None:
    rows = [
        run("full", 0, 0.5, code_version="0.1.0", git_commit="a" * 40),
        run("full", 1, 0.5, code_version="0.2.0", git_commit="b" * 40, git_dirty="True"),
        run("dpq", 0, 0.5, code_version="0.2.0", git_commit="b" * 40),
        run("dpq", 1, 0.5, code_version="0.2.0", git_commit="b" * 40),
        run("qr", 0, 0.5, code_version="0.2.0", git_commit="b" * 40), run("qr", 1, 0.5),
        run("mgqe", 0, 0.5), run("mgqe", 1, 0.5),  # no tags at all: unknown, no warning
    ]  # fmt: skip
    rep = report(rows)
    assert len(rep.warnings) == 2
    full, qr = sorted(rep.warnings)
    assert "0.1.0@aaaaaaaaaaaa" in full and "0.2.0@bbbbbbbbbbbb+dirty" in full
    assert "unrecorded x1" in qr and "--filter" in qr
    code = rep.aggregated.set_index("method")["code"]
    assert code["dpq"] == "0.2.0@bbbbbbbbbbbb" and code["mgqe"] == ""
    assert "different code" in to_markdown(rep.tables, rep.warnings)


def test_states_are_counted_apart() -> None:
    """RUNNING, KILLED, LOST are their own states, not "failed"; a SKIPPED run that points at a
    loaded run is dropped, one whose twin is not loaded stands in for it with the twin's numbers."""
    rows = [
        {**run("full", 0, 0.5), "config_hash": "h0"},
        run("full", 1, status="RUNNING"), run("full", 2, status="LOST"),
        run("full", 3, status="FAILED"), run("full", 4, status="KILLED"),
        {**run("full", 0, 0.5, status="SKIPPED"), "config_hash": "h0", "same_as": "mlflow-id"},
        {**run("full", 5, 0.7, status="SKIPPED"), "config_hash": "h5", "same_as": "elsewhere"},
        {**run("full", 6, status="SKIPPED"), "config_hash": "h6"},  # nothing to resolve to
    ]  # fmt: skip
    rep = report(rows)
    assert (rep.skipped, rep.skipped_stood_in) == (1, 1)
    assert sorted(rep.finished["seed"]) == ["0", "5"]
    assert sorted(rep.unfinished["status"]) == ["FAILED", "KILLED", "LOST", "RUNNING", "SKIPPED"]
    (row,) = rep.aggregated.to_dict("records")
    assert (row["n"], row["n_failed"], row["n_unfinished"]) == (2, 1, 5)
    assert row["unfinished"] == "1 failed, 1 killed, 1 lost, 1 running, 1 skipped"
    assert "| 2 (+1 failed, 1 killed, 1 lost, 1 running, 1 skipped) |" in to_markdown(rep.tables)


def _folder(root: Path, name: str, seed: int, lr: float, hr: float | None, status: str = "FINISHED",
            same_as: dict | None = None, code: str = "0.3.0") -> None:  # fmt: skip
    run_dir = root / name
    run_dir.mkdir(parents=True)
    ident = {
        "dataset": "toy",
        "model": "gmf",
        "method": "full",
        "user_method": "",
        "task": "ranking",
        "seed": str(seed),
        "loss": "bce",
        "config_hash": f"lr{lr}s{seed}",
        "code_version": code,
    }
    record: dict = {"status": status, **ident}
    if hr is not None:
        record["metrics"] = {
            "test/hr_at_10": hr,
            "test/ndcg_at_10": hr / 2,
            "size/fraction_of_full": 1.0,
        }
    if same_as:
        record["same_as"] = same_as
    (run_dir / "metrics.json").write_text(json.dumps(record))
    cfg = (f"seed: {seed}\npreset: p\ntrain:\n  lr: {lr}\n  progress: {str(seed % 2 == 0).lower()}\n"
           "method:\n  _target_: x.full\n  init_std: 0.01\n")  # fmt: skip
    (run_dir / "config.yaml").write_text(cfg)


def test_report_on_run_folders_splits_lr_and_resolves_skips(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    for seed, hr in enumerate([0.4, 0.5, 0.6]):
        _folder(root, f"a{seed}", seed, 0.001, hr)
    _folder(root, "b0", 0, 0.1, 0.2)
    _folder(root, "skip", 1, 0.001, None, "SKIPPED", {"run_id": "abc", "run_dir": str(root / "a1"),
                                                       "metrics": {"test/hr_at_10": 0.5}})  # fmt: skip
    _folder(root, "c", 2, 0.1, None, "RUNNING", code="0.4.0")
    assert (
        main(
            [
                "--runs-dir",
                str(root),
                "--out",
                str(tmp_path / "r"),
                "--no-plots",
                "--margin",
                "0.02",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "6 runs from" in out and "4 finished" in out and "1 not finished (1 RUNNING)" in out
    assert "1 SKIPPED (same as a run above, not counted again)" in out
    assert "not pooled" in out and "settings differ in train.lr" in out
    table = pd.read_csv(tmp_path / "r" / "sweep" / "table.csv").set_index("label")
    assert table.loc["full (train.lr=0.001)", "gmf n"] == 3
    assert table.loc["full (train.lr=0.001)", "gmf HR@10 mean"] == pytest.approx(0.5)
    assert table.loc["full (train.lr=0.1)", "gmf n"] == 1
    assert table.loc["full (train.lr=0.1)", "gmf unfinished"] == 1  # the RUNNING lr=.1 run
    assert table.loc["full (train.lr=0.1)", "gmf settings"] == "train.lr=0.1"
    md = (tmp_path / "r" / "sweep" / "table.md").read_text()
    assert "2 % of its mean" in md and "| 1 (+1 running) |" in md
    assert main(["--runs-dir", str(root), "--out", str(tmp_path / "r"), "--margin", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--margin 1.5" in err[0]


def test_digest_is_order_free() -> None:
    assert digest({"a": "1", "b": "2"}) == digest({"b": "2", "a": "1"}) != digest({"a": "1"})


def test_row_labels_name_one_cell_each() -> None:
    """Cells that differ beyond the first three keys, or whose configs were not recorded, still
    get distinct rows (else two cells would be written into one table row)."""
    many = {"a.k1": "1", "a.k2": "1", "a.k3": "1"}
    other = {"a.k1": "2", "a.k2": "2", "a.k3": "2", "a.k4": "2"}
    rows = [run("full", 0, 0.1, cfg={**many, "a.k4": "1"}), run("full", 0, 0.2, cfg={**many, "a.k4": "2"}),
            run("full", 0, 0.3, cfg=other)]  # fmt: skip
    rows += [{**run("qr", s, 0.4 + s), "config": "", "cell_hash": f"t{s}"} for s in (0, 1)]
    rep = report(rows)
    labels = [r["label"] for r in rep.tables[0].rows]
    assert len(labels) == len(set(labels)) == 5
    assert "full (a.k1=2, a.k2=2, a.k3=2, +1 more)" in labels  # short where that is unique
    assert "full (a.k1=1, a.k2=1, a.k3=1, a.k4=1)" in labels  # in full where it is not
    assert sum("config not recorded, cell t" in label for label in labels) == 2
    assert sorted(rep.aggregated["n"]) == [1] * 5
