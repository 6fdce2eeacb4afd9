"""Figure 8 of the MGQE paper: do items of one category share codes?

For every group of finished runs (dataset x backbone x method setting) whose item layers store
codes (``recbench.serving.code_layers``: scalar quantisation, DPQ, MGQE), the run with the lowest
seed is read back from its serving artifact: the item codes and the raw item id of each row
(``serving/ids.npz``). The
dataset's ``categories`` node (``conf/dataset/*.yaml``, e.g. MovieLens genres) maps raw ids to
categories; datasets without one are skipped. Each item layer gives one heatmap of the mean
fraction of code positions shared by two items of categories A and B (``code_similarity_matrix``)
and a CSV of the matrix. Why from the artifact: it is exactly what is served, and it needs no
retraining or model code.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbench import record
from recbench.report.tables import GROUP_KEYS

#: The serving folder and the config of a run, as a local folder (None when unavailable).
RunFolder = Callable[[pd.Series], Path | None]


def first_seed_runs(finished: pd.DataFrame) -> pd.DataFrame:
    """One run per group (the lowest seed, then the earliest start)."""
    if finished.empty:
        return finished
    keys = [k for k in GROUP_KEYS if k in finished.columns]
    ordered = finished.assign(_seed=pd.to_numeric(finished["seed"], errors="coerce"))
    ordered = ordered.sort_values(["_seed", "start_time"], na_position="last")
    return ordered.groupby(keys, sort=True, dropna=False).head(1).drop(columns="_seed")


def load_categories(config_path: Path) -> dict[Any, list[str]] | None:
    """Raw item id -> categories from the ``dataset.categories`` node of a resolved run config;
    None when the dataset has none."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_path)
    node = OmegaConf.select(cfg, "dataset.categories")
    if node is None:
        return None
    return dict(instantiate(node))


def code_similarity_plots(
    runs: pd.DataFrame,
    run_folder: RunFolder,
    out: Path,
    notes: list[str],
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """Heatmap + CSV per item layer of each quantised group's first-seed run over the categories
    ``labels`` (default: the 15 most frequent); problems are notes. Every matrix is computed
    first so that all heatmaps share one colour scale (min and max over all of them)."""
    from recbench.report.plots import (
        code_similarity_matrix,
        draw_code_similarity,
        similarity_labels,
        slug,
    )
    from recbench.serving import FOLDER, read_item_codes

    paths: list[Path] = []
    figures: list[tuple[Path, np.ndarray, list[str], list[int], str]] = []
    categories_of: dict[str, Mapping[Any, list[str]] | None] = {}
    for _, run in first_seed_runs(runs).iterrows():
        label = (
            f"{run['dataset']} / {run['model']} / {run['method']} {run.get('setting', '')}".strip()
        )
        try:
            folder = run_folder(run)
            if folder is None or not (folder / FOLDER / "manifest.json").is_file():
                continue
            codes, item_raw = read_item_codes(folder / FOLDER)
            if not codes:
                continue  # not a quantised method
            dataset = str(run["dataset"])
            if dataset not in categories_of:
                categories_of[dataset] = load_categories(folder / record.CONFIG_FILE)
            genres = categories_of[dataset]
            if genres is None:
                continue
            cats = [genres.get(raw, []) for raw in item_raw.tolist()]
            names = similarity_labels(cats, labels=labels)
            sizes = [sum(1 for c in cats if name in c) for name in names]
            for layer, matrix_codes in codes.items():
                base = slug(
                    dataset,
                    str(run["model"]),
                    str(run["method"]),
                    str(run.get("setting", "")),
                    layer,
                )
                title = f"{label}: {layer} codes shared (seed {run['seed']})"
                matrix, names = code_similarity_matrix(matrix_codes, cats, names)
                csv = out / f"code_similarity__{base}.csv"
                out.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(matrix, index=names, columns=names).to_csv(csv)
                paths.append(csv)
                figures.append((out / f"code_similarity__{base}.png", matrix, names, sizes, title))
                notes.append(f"code similarity {label} {layer}: {similarity_summary(matrix)}")
        except Exception as exc:  # noqa: BLE001 - a figure must never cost the tables
            notes.append(f"code-similarity plot for {label} skipped ({type(exc).__name__}: {exc})")
    finite = [m[np.isfinite(m)] for _, m, _, _, _ in figures]
    values = np.concatenate(finite) if finite else np.array([])
    vmin, vmax = (float(values.min()), float(values.max())) if values.size else (None, None)
    for png, matrix, names, sizes, title in figures:
        try:
            paths.append(draw_code_similarity(matrix, names, sizes, png, title, vmin, vmax))
        except Exception as exc:  # noqa: BLE001
            notes.append(
                f"code-similarity heatmap {png.name} skipped ({type(exc).__name__}: {exc})"
            )
    if len(figures) > 1:
        notes.append(f"code-similarity heatmaps share one colour scale: {vmin:.4f} to {vmax:.4f}")
    return paths


def similarity_summary(matrix: np.ndarray) -> str:
    """Mean shared-code fraction within categories (diagonal) and across (off-diagonal)."""
    diagonal = np.nanmean(np.diag(matrix))
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    return f"within-category {diagonal:.4f}, across {np.nanmean(off):.4f}"


def folder_resolver(source: Any) -> tuple[RunFolder, Callable[[], None]]:
    """A function giving a run's local folder (its ``run_dir`` when it exists here, else for an
    MLflow store the logged ``serving`` artifacts and ``config.yaml`` downloaded to a temporary
    folder, only when the manifest shows codes), and a cleanup callback."""
    import json
    import os

    from recbench.serving import code_layers

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tmp = tempfile.TemporaryDirectory(prefix="recbench-report-")
    client = getattr(source, "client", None)

    def resolve(run: pd.Series) -> Path | None:
        local = Path(str(run.get("run_dir") or "."))
        if (
            run.get("run_dir")
            and (local / "serving").is_dir()
            and (local / record.CONFIG_FILE).is_file()
        ):
            return local
        if client is None:
            return None
        run_id = str(run["run_id"])
        if "serving" not in {a.path for a in client.list_artifacts(run_id)}:
            return None
        target = Path(tmp.name) / run_id
        manifest = client.download_artifacts(run_id, "serving/manifest.json", str(target))
        if not code_layers(json.loads(Path(manifest).read_text())):
            return None
        for artifact in ("serving", record.CONFIG_FILE):
            client.download_artifacts(run_id, artifact, str(target))
        return target

    return resolve, tmp.cleanup
