"""Figures of the paper kind, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Why ``Figure`` + Agg instead of pyplot: the report runs headless (clusters, CI) and may be imported
into a notebook; building ``matplotlib.figure.Figure`` objects directly never switches the global
backend nor leaks open figures.

* ``plot_quality_vs_size``: quality against the serving size (fraction of full, log x), a line per
  method (Figure 6 style).
* ``plot_training_loss``: training loss per epoch, a line per method, mean over seeds with a
  ±std band (Figure 7 style).
* ``plot_item_popularity``: events per item by popularity rank, linear and log-log (Figure 4).
* ``plot_code_similarity``: for quantised methods, the mean fraction of code positions two items
  share, between and within categories (Figure 8).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recbench.report.tables import FULL, SIZE, MetricSpec, row_label


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def slug(*parts: str) -> str:
    """A file-name-safe name from labels (``ml-100k``, ``sampled-100``, ...)."""
    text = "__".join(str(p) for p in parts if str(p))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "plot"


def _method_label(rec: pd.Series) -> str:
    loss = rec.get("_loss", "")
    variant = rec.get("variant", "")
    return row_label(rec["method"], rec["user_method"], "", loss if isinstance(loss, str) else "",
                     variant if isinstance(variant, str) else "")  # fmt: skip


def plot_quality_vs_size(
    agg: pd.DataFrame, specs: Sequence[MetricSpec], path: str | Path, title: str = ""
) -> Path:
    """One section x backbone of the aggregated frame: a panel per quality metric; a line per
    method through its settings, x = mean serving size as a fraction of the full model (log),
    y = mean over seeds with std error bars. The full model is a dashed reference line."""
    quality = [s for s in specs if s.higher_is_better is not None]
    fig = _figure(4.2 * len(quality), 3.4)
    axes = fig.subplots(1, len(quality), squeeze=False)[0]
    size_col = f"{SIZE} mean"
    data = agg[agg["n"] > 0]
    multi_loss = data["loss"].nunique() > 1
    data = data.assign(_loss=data["loss"] if multi_loss else "")
    for ax, spec in zip(axes, quality):
        mean_col, std_col = f"{spec.column} mean", f"{spec.column} std"
        if mean_col not in data or size_col not in data:
            ax.set_axis_off()
            continue
        for label, rows in data.groupby(data.apply(_method_label, axis=1), sort=True):
            rows = rows.dropna(subset=[mean_col, size_col]).sort_values(size_col)
            if rows.empty:
                continue
            x, y = rows[size_col].to_numpy(), rows[mean_col].to_numpy()
            err = rows[std_col].fillna(0).to_numpy() if std_col in rows else None
            if rows["method"].iloc[0] == FULL:
                ax.axhline(y.mean(), color="black", linestyle="--", linewidth=1, label=label)
                ax.plot(x, y, "o", color="black")
                continue
            ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("serving size / full")
        ax.set_ylabel(spec.label)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[-1].legend(handles, labels, fontsize=7, loc="best")
    return _save(fig, path)


def plot_training_loss(
    history: pd.DataFrame, runs: pd.DataFrame, path: str | Path, title: str = ""
) -> Path:
    """``history`` (run_id, epoch, value) of one section x backbone; ``runs`` (labelled) gives
    each run's method and setting. A line per (method, setting): mean over seeds per epoch with a
    ±std band, so a method that trains slower or less stably shows it."""
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    info = runs.assign(variant=runs["variant"] if "variant" in runs else "")
    info = info.drop_duplicates("run_id").set_index("run_id")
    merged = history.join(info[["method", "user_method", "setting", "variant"]], on="run_id", how="inner")
    if merged.empty:
        ax.text(0.5, 0.5, "no per-epoch training loss recorded", ha="center", va="center")
    for (method, user_method, setting, variant), rows in merged.groupby(
        ["method", "user_method", "setting", "variant"], sort=True
    ):
        curve = rows.groupby("epoch")["value"].agg(["mean", "std"]).sort_index()
        epochs = curve.index.to_numpy()
        style = {"color": "black", "linestyle": "--"} if method == FULL else {}
        (line,) = ax.plot(
            epochs, curve["mean"], label=row_label(method, user_method, setting, "", variant), **style
        )
        std = curve["std"].fillna(0).to_numpy()
        ax.fill_between(
            epochs, curve["mean"] - std, curve["mean"] + std, color=line.get_color(), alpha=0.15
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_item_popularity(counts: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Events per item against popularity rank, on linear and log-log axes (Figure 4 style).

    Why both: the linear panel shows how few items take most events (the head that frequency-aware
    methods give more capacity to); the log-log panel shows whether the tail is power-law-like."""
    counts = np.asarray(counts, dtype=float).ravel()
    if counts.size == 0:
        raise ValueError("counts is empty: nothing to plot")
    ordered = np.sort(counts)[::-1]
    rank = np.arange(1, ordered.size + 1)
    fig = _figure(8.0, 3.2)
    linear, loglog = fig.subplots(1, 2)
    linear.plot(rank, ordered)
    linear.set_xlabel("item rank")
    linear.set_ylabel("events")
    linear.set_title("linear", fontsize=9)
    positive = ordered > 0
    loglog.loglog(rank[positive], ordered[positive], marker=".", linestyle="none", markersize=2)
    loglog.set_xlabel("item rank")
    loglog.set_ylabel("events")
    loglog.set_title("log-log", fontsize=9)
    total = ordered.sum()
    if total > 0:
        head = max(1, int(round(0.2 * ordered.size)))
        share = ordered[:head].sum() / total
        linear.text(0.95, 0.9, f"top 20% items: {share:.0%} of events", transform=linear.transAxes,
                    ha="right", fontsize=8)  # fmt: skip
    for ax in (linear, loglog):
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def code_similarity_matrix(
    codes: np.ndarray, categories: Sequence[Sequence[str]], labels: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Mean fraction of code positions shared by two distinct items, one from category A and one
    from category B (items may have several categories; an item is never paired with itself).

    Computed from per-category code histograms instead of all item pairs: for position d,
    shared(A, B) = sum_c count_A[d, c] * count_B[d, c], minus the |A ∩ B| self-pairs that match at
    every position; divided by D * (|A||B| - |A ∩ B|). NaN where a category has no such pair."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (n_items, D), got shape {codes.shape}")
    n_items, depth = codes.shape
    if len(categories) != n_items:
        raise ValueError(f"{len(categories)} category lists for {n_items} items")
    if labels is None:
        freq: dict[str, int] = {}
        for cats in categories:
            for c in set(cats):
                freq[c] = freq.get(c, 0) + 1
        labels = sorted(freq, key=lambda c: (-freq[c], c))
    labels = list(labels)
    member = np.zeros((n_items, len(labels)), dtype=np.float64)
    position = {c: j for j, c in enumerate(labels)}
    for i, cats in enumerate(categories):
        for c in set(cats):
            if c in position:
                member[i, position[c]] = 1.0
    shared = np.zeros((len(labels), len(labels)))
    for d in range(depth):
        _, code_id = np.unique(codes[:, d], return_inverse=True)
        onehot = np.zeros((n_items, int(code_id.max()) + 1))
        onehot[np.arange(n_items), code_id] = 1.0
        hist = member.T @ onehot  # (categories, codes at position d)
        shared += hist @ hist.T
    overlap = member.T @ member  # |A ∩ B|
    sizes = member.sum(axis=0)
    pairs = np.outer(sizes, sizes) - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = (shared - overlap * depth) / (depth * pairs)
    matrix[pairs <= 0] = np.nan
    return matrix, labels


def plot_code_similarity(
    codes: np.ndarray,
    categories: Sequence[Sequence[str]],
    path: str | Path,
    max_categories: int = 15,
    title: str = "",
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Heatmap of ``code_similarity_matrix`` over ``labels`` (default: the ``max_categories`` most
    frequent categories) (Figure 8 style): a quantised embedding that learned the catalogue should
    share more codes within a category (diagonal) than across. Returns the matrix and its labels."""
    freq: dict[str, int] = {}
    for cats in categories:
        for c in set(cats):
            freq[c] = freq.get(c, 0) + 1
    if labels:
        unknown = [c for c in labels if c not in freq]
        if unknown:
            raise ValueError(f"no item has categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                             f"known: {', '.join(sorted(freq))}")  # fmt: skip
        labels = list(labels)
    else:
        labels = sorted(freq, key=lambda c: (-freq[c], c))[:max_categories]
    matrix, labels = code_similarity_matrix(codes, categories, labels)
    side = 2.5 + 0.35 * len(labels)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image, ax=ax, label="shared code fraction")
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)
    return matrix, labels
