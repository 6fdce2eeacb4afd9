"""Figure 8 end to end: a DPQ/MGQE run on a small MovieLens-100K-format dataset written here, then
the report's code-similarity heatmap, checked against shared codes counted pair by pair from the
served item table (decoded by a different path: ``table_from_serving``)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recbench.data.movielens import ML_100K_GENRES
from recbench.report.cli import main
from recbench.serving import load_model
from tests.conftest import ROOT


def write_ml_100k(
    root: Path, users: int = 40, items: int = 36, seed: int = 0
) -> dict[int, list[str]]:
    """u.data (every user rates 12 items) and u.item with 1-2 genres per item among the first 4;
    returns the genres by raw item id."""
    rng = np.random.default_rng(seed)
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    lines = []
    for user in range(1, users + 1):
        for t, item in enumerate(rng.choice(np.arange(1, items + 1), size=12, replace=False)):
            lines.append(f"{user}\t{item}\t{rng.integers(1, 6)}\t{880000000 + 1000 * user + t}")
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    genres, rows = {}, []
    for item in range(1, items + 1):
        chosen = sorted(rng.choice(np.arange(1, 5), size=1 + item % 2, replace=False).tolist())
        flags = ["1" if g in chosen else "0" for g in range(len(ML_100K_GENRES))]
        genres[item] = [ML_100K_GENRES[g] for g in chosen]
        rows.append(
            "|".join([str(item), f"Movie {item} (1995)", "01-Jan-1995", "", "http://x", *flags])
        )
    (folder / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    return genres


@pytest.mark.parametrize("method", ["dpq", "mgqe", "scalar_quant"])
def test_code_similarity_heatmap_matches_pairwise_count(method: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    genres = write_ml_100k(tmp_path / "data")
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "recbench.run", "model=gmf", f"method={method}", "dataset=ml-100k",
        f"dataset.root={tmp_path / 'data'}", "train.epochs=1",
        "train.progress=false", f"hydra.run.dir={runs / method}",
    ]  # fmt: skip
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    positions = 64 if method == "scalar_quant" else 8  # SQ: one code per dimension
    if method == "mgqe":  # recorded to MLflow; the report downloads the artifact
        cmd += ["method.num_subspaces=8", "method.num_centroids=[16,4]", f"tracking.uri={store}",
                f"tracking.artifact_root={tmp_path / 'artifacts'}"]  # fmt: skip
    elif method == "dpq":  # run folders only
        cmd += ["method.num_subspaces=8", "method.num_centroids=4", "tracking=none"]
    else:
        cmd += ["method.bits=2", "tracking=none"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    serving = runs / method / "serving"
    with np.load(serving / "ids.npz") as ids:
        item_raw = ids["item_raw"]
    assert sorted(item_raw.tolist()) == sorted(genres)  # every raw item, each once

    if method == "mgqe":  # as on a machine without the run folder: only the store is left
        moved = tmp_path / "elsewhere"
        (runs / method).rename(moved)
        serving = moved / "serving"
        source = ["--uri", store, "--no-mlflow"]
    else:
        source = ["--runs-dir", str(runs)]
    if method == "dpq":  # the paper's way: named categories only
        source += ["--code-categories", f"{ML_100K_GENRES[2]},{ML_100K_GENRES[1]}"]
    assert main([*source, "--out", str(tmp_path / "reports"), "--name", "r"]) == 0
    plots = tmp_path / "reports" / "r" / "plots"
    (png,) = plots.glob("code_similarity__*item_embedding.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    got = pd.read_csv(png.with_suffix(".csv"), index_col=0)
    if method == "dpq":
        assert list(got.index) == list(got.columns) == [ML_100K_GENRES[2], ML_100K_GENRES[1]]
    else:
        assert len(got) == 4  # every genre present in the written data
    assert "code similarity ml-100k / gmf" in capsys.readouterr().out

    # Independent count: items share position j when their served sub-vectors j are equal.
    model = load_model(serving)
    table = model.item_embedding.full_table().detach()[1:]
    sub = table.view(len(item_raw), positions, -1)
    cats = [genres[int(raw)] for raw in item_raw]
    for a, b in itertools.product(got.index, got.columns):
        total, pairs = 0.0, 0
        for i, j in itertools.permutations(range(len(item_raw)), 2):
            if a in cats[i] and b in cats[j]:
                total += float((sub[i] == sub[j]).all(-1).float().mean())
                pairs += 1
        assert got.loc[a, b] == pytest.approx(total / pairs, abs=1e-9), (a, b)
    assert torch.isfinite(torch.tensor(got.to_numpy())).all()


def test_no_heatmap_for_unquantised_methods(tmp_path: Path) -> None:
    write_ml_100k(tmp_path / "data")
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "recbench.run", "model=gmf", "method=low_rank", "dataset=ml-100k",
        f"dataset.root={tmp_path / 'data'}", "train.epochs=1", "train.progress=false",
        "tracking=none", f"hydra.run.dir={runs / 'low_rank'}",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["--runs-dir", str(runs), "--out", str(tmp_path / "reports"), "--name", "r"]) == 0
    assert not list((tmp_path / "reports" / "r" / "plots").glob("code_similarity__*"))
