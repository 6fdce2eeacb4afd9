"""The sampled protocol: negatives drawn once per (dataset, seed), saved, and reused by every model
(and every later evaluation), never items the user interacted with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recbench.data.prepared import prepare
from recbench.data.synthetic import generate
from recbench.engine.evaluators.sampled import SampledEvaluator


def data():  # noqa: ANN201
    return prepare(
        generate(num_users=120, num_items=90, events_per_user=12, seed=1), "ranking", seed=0
    )


def test_negatives_are_saved_once_and_reused(tmp_path: Path) -> None:
    d = data()
    first = SampledEvaluator(d, seed=0, num_sampled=20, directory=tmp_path)
    stamp = first.path.stat().st_mtime_ns
    second = SampledEvaluator(d, seed=0, num_sampled=20, directory=tmp_path)  # "another model"
    assert second.path == first.path and second.path.stat().st_mtime_ns == stamp  # not redrawn
    for part in ("valid", "test"):
        assert torch.equal(first.candidates(part)[1], second.candidates(part)[1])
    other = SampledEvaluator(d, seed=1, num_sampled=20, directory=tmp_path)
    assert other.path != first.path
    assert not torch.equal(other.candidates("test")[1], first.candidates("test")[1])


def test_negatives_are_never_interacted_items(tmp_path: Path) -> None:
    d = data()
    ev = SampledEvaluator(d, seed=0, num_sampled=20, directory=tmp_path)
    seen: dict[int, set[int]] = {}
    for split in (d.train, d.valid, d.test):
        for u, i in zip(split.user.tolist(), split.item.tolist()):
            seen.setdefault(u, set()).add(i)
    users, candidates = ev.candidates("test")
    for u, row in zip(users.tolist(), candidates.tolist()):
        assert row[0] in seen[u]  # the held-out item first
        assert not (set(row[1:]) & seen[u]) and 0 not in row[1:]
        assert len(set(row[1:])) == 20
    assert np.all(candidates[:, 1:].numpy() <= d.num_items)
