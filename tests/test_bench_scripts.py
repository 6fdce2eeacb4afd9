"""The benchmark scripts' own logic: the sparse/dense crossover and a tiny end-to-end run."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------ bench_time_to_quality.py
import bench_time_to_quality as ttq  # noqa: E402


def test_time_to_target_counts_training_and_validation_until_the_first_hit() -> None:
    history = [
        ttq.Epoch(1, 2.0, 0.5, 0.10),
        ttq.Epoch(2, 2.0, 0.5, 0.30),
        ttq.Epoch(3, 2.0, 0.5, 0.25),
    ]
    assert ttq.time_to_target(history, 0.30) == (5.0, 2)
    assert ttq.time_to_target(history, 0.05) == (2.5, 1)
    assert ttq.time_to_target(history, 0.31) == (None, None)
    (row,) = ttq.summarise([ttq.Variant("a", None, history=history)], 0.2)
    assert (row.time_to_target_s, row.best, row.best_epoch, row.epochs_run) == (5.0, 0.30, 2, 3)
    assert row.epoch_s == 2.0 and row.total_s == 7.5


def test_round_robin_interleaves_and_stops_each_variant_on_its_own() -> None:
    order: list[str] = []

    def trainer(name: str, values: list[float], seconds: float = 1.0):
        def step(epoch: int) -> ttq.Epoch:
            order.append(name)
            return ttq.Epoch(epoch, seconds, 0.0, values[epoch - 1])

        return ttq.Variant(name, step)

    early = trainer("early", [0.3, 0.2, 0.1, 0.1, 0.1])  # best at 1: patience 2 stops it after 3
    slow = trainer("slow", [0.1, 0.2, 0.3, 0.4, 0.5], seconds=2.5)  # budget 5 s: two epochs
    steady = trainer("steady", [0.1, 0.2, 0.3, 0.4, 0.5], seconds=0.5)
    ttq.run_round_robin([early, slow, steady], max_epochs=5, patience=2, time_budget=5.0)
    assert order[:3] == ["early", "slow", "steady"]  # one epoch each in turn
    assert [len(v.history) for v in (early, slow, steady)] == [3, 2, 5]
    assert early.stopped == "early stop at epoch 3" and slow.stopped.startswith("time budget")
    assert steady.stopped == "max epochs (5)"


def test_an_interrupted_run_keeps_the_epochs_it_measured(tmp_path: Path, capsys) -> None:
    """A full softmax over a large catalogue takes hours: Ctrl-C must not lose the history."""

    def step(epoch: int) -> ttq.Epoch:
        if epoch == 3:
            raise KeyboardInterrupt
        return ttq.Epoch(epoch, 1.0, 0.5, 0.1 * epoch)

    history = tmp_path / "run.history.csv"
    with pytest.raises(KeyboardInterrupt):
        ttq.run_round_robin([ttq.Variant("a", step)], 5, 0, None, history)
    assert ttq.main(["--from-history", str(history)]) == 0
    (v,) = ttq.read_history(history)
    assert [e.epoch for e in v.history] == [1, 2] and v.history[-1].value == pytest.approx(0.2)


def test_script_runs_variants_and_an_external_adapter(tmp_path: Path, capsys, monkeypatch) -> None:
    """A tiny synthetic case end to end: two recbench variants, an external adapter that receives
    the same split, and one whose library is missing (reported, not fatal)."""
    (tmp_path / "fake_lib.py").write_text(
        "def train(data, k, seed):\n"
        "    assert data.num_items == 40 and k == 10\n"
        "    for value in (0.01, 0.5, 0.6):\n"
        "        yield 0.25, 0.05, value\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "ttq.csv"
    argv = ["--common", "dataset=synthetic dataset.loader.num_users=60 dataset.loader.num_items=40 "
            "dataset.loader.events_per_user=8 model=gmf train.batch_size=512 eval.serving_artifact=false",
            "--variant", "full=method=full", "--variant", "hashing=method=hashing",
            "--external", "lib=fake_lib:train", "--external", "missing=not_a_module_xyz:train",
            "--max-epochs", "3", "--patience", "0", "--reference", "0.5", "--out", str(out)]  # fmt: skip
    assert ttq.main(argv) == 0
    rows = {r["name"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"full", "hashing", "lib", "missing"}
    assert float(rows["full"]["target"]) == pytest.approx(0.475)
    assert rows["lib"]["time_to_target_s"] == "0.6" and rows["lib"]["epochs_to_target"] == "2"
    assert rows["missing"]["epochs_run"] == "0" and "not installed" in rows["missing"]["note"]
    assert int(rows["full"]["epochs_run"]) == 3
    history = list(csv.DictReader(out.with_suffix(".history.csv").open()))
    assert len(history) == 3 + 3 + 3
    assert "target: 0.95 x 0.5000 = 0.4750" in capsys.readouterr().out


def test_time_to_quality_bad_variant_is_a_one_line_error(capsys) -> None:
    assert ttq.main(["--variant", "method=dpq"]) == 2
    assert "--variant='method=dpq' must be NAME=..." in capsys.readouterr().err


def test_from_history_resummarises_against_another_reference(tmp_path: Path, capsys) -> None:
    history = tmp_path / "run.history.csv"
    history.write_text(
        "variant,epoch,train_s,valid_s,value\n"
        "fast,1,1.0,0.0,0.2\nfast,2,1.0,0.0,0.4\n"
        "lib,1,3.0,1.0,0.3\nlib,2,3.0,1.0,0.35\nlib,3,3.0,1.0,0.3\n"
    )
    assert (
        ttq.main(["--from-history", str(history), "--reference-variant", "lib", "--fraction", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "target: 1 x 0.3500 = 0.3500" in out
    (fast,) = [line for line in out.splitlines() if line.startswith("fast")]
    assert (
        fast.split()[2:5] == ["2.0", "2.0", "2"] and fast.split()[-1] == "0.250"
    )  # 2 s against 8 s
    assert not (tmp_path / "run.history.history.csv").exists()  # nothing written
    other = tmp_path / "other.history.csv"  # a variant trained in another process
    other.write_text("variant,epoch,train_s,valid_s,value\nslow,1,10.0,1.0,0.36\n")
    assert ttq.main(["--from-history", str(history), str(other), "--reference-variant", "lib"]) == 0
    out = capsys.readouterr().out
    assert "target: 0.95 x 0.3500" in out and any(x.startswith("slow ") for x in out.splitlines())
    assert ttq.main(["--from-history", str(history), str(history)]) == 2  # same names twice
    png = tmp_path / "curves.png"
    assert ttq.main(["--from-history", str(history), str(other), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert ttq.main(["--from-history", str(tmp_path / "none.csv")]) == 2
    assert "--from-history=" in capsys.readouterr().err


def test_throughput_interleaved_cases_with_losses(tmp_path: Path, monkeypatch) -> None:
    """``--interleave`` with ``--losses``: one row per (method, loss), the first case's relative
    speed is 1, and the sampled softmax's shared candidates count as scored samples."""
    import bench_throughput

    monkeypatch.setitem(bench_throughput.SCALES, "tiny", (50, 40, 900))
    out = tmp_path / "t.csv"
    argv = ["--scales", "tiny", "--models", "gmf", "--methods", "full,hashing", "--losses", "bce,sampled_softmax@5",
            "--interleave", "--no-eval", "--no-epoch", "--steps", "2", "--repeats", "2", "--warmup", "1",
            "--batch-size", "64", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert bench_throughput.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["method"], r["loss"]) for r in rows] == [
        ("full", "bce"),
        ("full", "sampled_softmax@5"),
        ("hashing", "bce"),
        ("hashing", "sampled_softmax@5"),
    ]
    assert float(rows[0]["relative"]) == 1.0
    assert all(float(r["samples_per_s"]) > 0 and float(r["step_ms"]) > 0 for r in rows)
    assert all(r["epoch_rate"] == "nan" and float(r["epoch_s"]) > 0 for r in rows)  # estimated


# ------------------------------------------------------------------ ext_recbole.py (RecBole adapter)
import ext_recbole  # noqa: E402 - imports no RecBole at module level


def small_ranking_data():  # noqa: ANN201 - a PreparedData
    from recbench.data.interactions import Interactions
    from recbench.data.prepared import prepare

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 31), 6)
    items = np.concatenate([rng.choice(np.arange(100, 140), 6, replace=False) for _ in range(30)])
    stamps = np.tile([5, 5, 6, 7, 7, 7], 30)  # ties: recbench's file order decides them
    return prepare(Interactions(users, items, timestamp=stamps), "ranking", seed=0)


def fake_recbole_view(data, shuffle_seed: int = 1):  # noqa: ANN001, ANN201
    """What RecBole's loader would hold for ``data``'s validation part: its own ids (a permutation,
    0 = [PAD]) with string tokens, positives and history as tensors of its ids."""
    import types

    import torch

    rng = np.random.default_rng(shuffle_seed)
    user_tokens = np.array(["[PAD]", *map(str, rng.permutation(np.arange(1, data.num_users + 1)))])
    item_tokens = np.array(["[PAD]", *map(str, rng.permutation(np.arange(1, data.num_items + 1)))])
    uid_of = {int(t): i for i, t in enumerate(user_tokens[1:], 1)}
    iid_of = {int(t): i for i, t in enumerate(item_tokens[1:], 1)}
    positive = np.array([None] * (data.num_users + 1))
    history = np.array([None] * (data.num_users + 1))
    indptr, train_items = data.train_csr()
    for user, item in zip(data.valid.user.tolist(), data.valid.item.tolist()):
        positive[uid_of[user]] = torch.tensor([iid_of[item]])
        history[uid_of[user]] = torch.tensor(
            [iid_of[i] for i in train_items[indptr[user] : indptr[user + 1]]][::-1]
        )
    loader = types.SimpleNamespace(
        uid_list=torch.tensor(sorted(uid_of[u] for u in data.valid.user.tolist())),
        uid2positive_item=positive, uid2history_item=history,
    )  # fmt: skip
    dataset = types.SimpleNamespace(
        uid_field="user_id", iid_field="item_id", item_num=data.num_items + 1,
        field2id_token={"user_id": user_tokens, "item_id": item_tokens},
    )  # fmt: skip
    return loader, dataset


def test_recbole_files_hold_recbenchs_split_with_unique_times(tmp_path: Path) -> None:
    data = small_ranking_data()
    ext_recbole.write_atomic_files(data, tmp_path)
    stamps = []
    for part in ("train", "valid", "test"):
        lines = (tmp_path / f"recbench.{part}.inter").read_text().splitlines()
        assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
        rows = np.array([[int(float(x)) for x in line.split("\t")] for line in lines[1:]])
        inter = getattr(data, part)
        assert (rows[:, 0] == inter.user).all() and (rows[:, 1] == inter.item).all()
        stamps.extend(rows[:, 2].tolist())
    assert stamps == list(range(len(data.train) + len(data.valid) + len(data.test)))


def test_validation_checksums_agree_only_for_the_same_protocol() -> None:
    data = small_ranking_data()
    loader, dataset = fake_recbole_view(data)
    ours, theirs = ext_recbole.validation_checksums(data, loader, dataset)
    assert ours == theirs
    # another held-out item for one user, or one training item fewer excluded: different checksum
    uid = int(loader.uid_list[0])
    original = loader.uid2positive_item[uid]
    loader.uid2positive_item[uid] = original % (data.num_items) + 1
    assert ext_recbole.validation_checksums(data, loader, dataset)[1] != ours
    loader.uid2positive_item[uid] = original
    loader.uid2history_item[uid] = loader.uid2history_item[uid][1:]
    assert ext_recbole.validation_checksums(data, loader, dataset)[1] != ours


def test_recbole_gmf_trains_on_recbenchs_split() -> None:
    """Only where RecBole is installed (it is not a dependency): two epochs on a tiny split."""
    pytest.importorskip("recbole")
    data = small_ranking_data()
    epochs = ext_recbole.train_gmf(data, k=10, seed=0, train_batch_size=64)
    rows = [next(epochs) for _ in range(2)]
    assert all(
        train_s > 0 and valid_s > 0 and 0.0 <= value <= 1.0 for train_s, valid_s, value in rows
    )
