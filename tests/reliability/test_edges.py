"""Data and knob edges: each a one-line error before data loads where possible, or a documented
policy (repeated events)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recbench.checks import check_data_fit, preflight
from recbench.data.filters import deduplicate
from recbench.data.interactions import Interactions
from recbench.engine.samplers.negatives import NegativeSampler
from recbench.errors import ConfigError, DataError
from tests.reliability.conftest import TINY, one_line_error, recbench_cmd, run, runs_of


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["method=low_rank", "method.budget=abc"], "method.budget=abc is not a number"),
        (["method=low_rank", "method.budget=2"], "outside (0, 1]"),
        (["method=low_rank", "method.budget=0"], "outside (0, 1]"),
        (["seed=-1"], "seed=-1 is out of range"),
        (["model=dot_bias", "seed=-1"], "seed=-1 is out of range"),
        (["eval.protocol=sampled", "seed=-1"], "seed=-1 is out of range"),
        (["seed=12345678901234567890"], "is out of range"),
        (["eval.protocol=sampled", "eval.k=500"], "eval.k=500"),
        (["tracking.experiment=../../x"], "not a plain name"),
        (["tracking.experiment=a/b"], "not a plain name"),
        (["resume=maybe"], "resume=maybe is unknown"),
        (["dataset.duplicates=drop"], "dataset.duplicates=drop is unknown"),
    ],
)
def test_knobs_fail_before_data(args: list[str], expected: str) -> None:
    problem = preflight(args)
    assert problem is not None and expected in problem and "\n" not in problem


def test_good_knobs_pass() -> None:
    assert preflight(["method=low_rank", "method.budget=1", "seed=4294967295", "resume=any_code",
                      "tracking.experiment=my-exp_1.2"]) is None  # fmt: skip


def test_k_not_below_the_number_of_items(tmp_path: Path, store: str) -> None:
    proc = run(recbench_cmd([*TINY, "eval.k=100000"], store, tmp_path), tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = one_line_error(proc.stderr)
    assert "eval.k=100000 is not below the" in line
    assert [r.info.status for r in runs_of(store)] == ["FAILED"]


def test_check_data_fit_in_process() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"eval": {"k": 10, "protocol": "full"}})
    small = type("D", (), {"task": "ranking", "num_items": 10, "name": "tiny"})()
    with pytest.raises(ConfigError, match="eval.k=10 is not below the 10 items"):
        check_data_fit(cfg, small)
    check_data_fit(cfg, type("D", (), {"task": "ranking", "num_items": 11, "name": "x"})())


def events(pairs: list[tuple[int, int]]) -> Interactions:
    n = len(pairs)
    return Interactions(
        user=np.array([u for u, _ in pairs]), item=np.array([i for _, i in pairs]),
        rating=np.arange(1, n + 1, dtype=np.float32) % 5 + 1, timestamp=np.arange(n), name="d",
    )  # fmt: skip


def test_duplicate_policies() -> None:
    inter = events([(1, 1), (1, 2), (1, 1), (2, 3), (1, 1)])
    kept, note = deduplicate(inter, "keep")
    assert len(kept) == 5 and "kept 2 repeated events of 1" in note
    last, note = deduplicate(inter, "last")
    assert len(last) == 3 and last.timestamp.tolist() == [1, 3, 4] and "latest" in note
    first, _ = deduplicate(inter, "first")
    assert first.timestamp.tolist() == [0, 1, 3]
    with pytest.raises(DataError, match="2 repeated .* user 1 and item 1"):
        deduplicate(inter, "error")
    assert deduplicate(events([(1, 1), (1, 2)]), "error")[1] is None


def test_negative_sampler_counts_distinct_items() -> None:
    """A user with 3 events on 2 of 3 items still has a negative (the old check counted events)."""
    users = torch.tensor([1, 1, 1])
    items = torch.tensor([1, 1, 2])
    sampler = NegativeSampler(users, items, num_items=3, device=torch.device("cpu"))
    negatives = sampler.sample(torch.tensor([1] * 20), 2, torch.Generator().manual_seed(0))
    assert set(negatives.flatten().tolist()) == {3}
    with pytest.raises(DataError, match="every item"):
        NegativeSampler(torch.tensor([1, 1, 1]), torch.tensor([1, 2, 3]), 3, torch.device("cpu"))


def test_duplicate_rows_in_u_data_end_to_end(tmp_path: Path, store: str) -> None:
    root = tmp_path / "data" / "ml-100k"
    root.mkdir(parents=True)
    rows = [
        f"{u}\t{i}\t{1 + (u + i) % 5}\t{100 * u + i}" for u in range(1, 31) for i in range(1, 21)
    ]
    rows += rows[:40]  # the first 40 events again
    (root / "u.data").write_text("\n".join(rows) + "\n")
    args = ["dataset=ml-100k", f"dataset.root={tmp_path / 'data'}", "train.epochs=1", "train.progress=false",
            "eval.serving_artifact=false", "eval.k=5"]  # fmt: skip
    proc = run(recbench_cmd(args, store, tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped 40 repeated events of 40 (user, item) pairs" in proc.stdout + proc.stderr


def test_a_folder_in_place_of_the_data_file() -> None:
    import tempfile

    from recbench.data.movielens import load_ml_100k
    from recbench.data.sequence_file import load_sequence_file

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ml-100k" / "u.data").mkdir(parents=True)
        with pytest.raises(DataError, match="is a folder, not a file"):
            load_ml_100k(tmp)
        with pytest.raises(DataError, match="is a folder, not a file"):
            load_sequence_file(Path(tmp) / "ml-100k" / "u.data")
