"""Figures of the paper kind, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Why ``Figure`` + Agg instead of pyplot: the report runs headless (clusters, CI) and may be imported
into a notebook; building ``matplotlib.figure.Figure`` objects directly never switches the global
backend nor leaks open figures.

* ``plot_quality_vs_size``: quality against the serving size (% of the full model, log x with
  labelled percent ticks), a line per method with error bars, the full model as a dashed line and
  the Pareto frontier (no smaller model is better) marked (Figure 6 style).
* ``plot_training_loss``: training loss per epoch (integer ticks; one-epoch runs as points), a
  line per method, mean over seeds with a ±std band (Figure 7 style).

Every figure colours a method the same way (``method_style``: a fixed map for the known methods,
a stable hash for new ones), so a reader can follow "dpq" across figures.
* ``plot_item_popularity``: events per item by popularity rank, linear and log-log (Figure 4).
* ``plot_code_similarity``: for quantised methods, the mean fraction of code positions two items
  share, between and within categories (Figure 8).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

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


#: One colour and marker per method in every figure (tab10 order; the full model is black).
METHOD_STYLE: dict[str, tuple[str, str]] = {
    "full": ("#000000", "s"),
    "hashing": ("#1f77b4", "o"),
    "bloom": ("#ff7f0e", "v"),
    "qr": ("#2ca02c", "^"),
    "mixed_dim": ("#d62728", "<"),
    "low_rank": ("#9467bd", ">"),
    "low_rank_r48": ("#9467bd", ">"),
    "scalar_quant": ("#8c564b", "D"),
    "dpq": ("#e377c2", "P"),
    "mgqe": ("#17becf", "X"),
    "dhe": ("#bcbd22", "h"),
    "cce": ("#7f7f7f", "*"),
}
_SPARE_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
_SPARE_MARKERS = ("o", "s", "^", "v", "D", "P", "X")
_LINESTYLES = ("-", "--", ":", "-.")


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method: fixed for the known ones, a stable hash of the name for others
    (the same in every figure and every report)."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    h = zlib.crc32(method.encode())
    return _SPARE_COLOURS[h % len(_SPARE_COLOURS)], _SPARE_MARKERS[(h // 7) % len(_SPARE_MARKERS)]


def short(label: str, limit: int = 48) -> str:
    """A legend entry cut to ``limit`` characters (a setting can list many knobs)."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _method_label(rec: pd.Series) -> str:
    loss = rec.get("_loss", "")
    variant = rec.get("variant", "")
    return row_label(rec["method"], rec["user_method"], "", loss if isinstance(loss, str) else "",
                     variant if isinstance(variant, str) else "")  # fmt: skip


def pareto_front(x: np.ndarray, y: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Indices of the points no other point beats: none is at most as large (x) and at least as
    good (y) with one of the two strictly. Sorted by x."""
    sign = 1.0 if higher_is_better else -1.0
    order = np.lexsort((-sign * y, x))  # by size, then best quality first
    front, best = [], -np.inf
    for i in order:
        if sign * y[i] > best:
            front.append(i)
            best = sign * y[i]
    return np.asarray(front, dtype=int)


def _percent_axis(ax, values: np.ndarray) -> None:  # noqa: ANN001 - matplotlib Axes
    """Log x axis in % of the full model with a few labelled 1-2-5 ticks that cannot overlap."""
    ax.set_xscale("log")
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    candidates = [m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)]
    ticks = [t for t in candidates if lo / 1.6 <= t <= hi * 1.6]
    if len(ticks) > 7:  # a wide range: decades only
        ticks = [t for t in ticks if np.isclose(np.log10(t), round(np.log10(t)))]
    if len(ticks) < 2:  # a narrow range: its ends, to two significant digits
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlim(lo / 1.6, hi * 1.6)


def error_columns(data: pd.DataFrame, column: str) -> tuple[str, str | None, str | None]:
    """How the error bars of ``column`` are drawn: ("95% CI", low, high) when the aggregate has
    ``<column> ci_low``/``ci_high``, else ("±1 std over seeds", std, None)."""
    low, high = f"{column} ci_low", f"{column} ci_high"
    if low in data and high in data:
        return "95% CI over seeds", low, high
    std = f"{column} std"
    return "±1 std over seeds", (std if std in data else None), None


def plot_quality_vs_size(
    agg: pd.DataFrame, specs: Sequence[MetricSpec], path: str | Path, title: str = ""
) -> Path:
    """One section x backbone of the aggregated frame: a panel per quality metric; a line per
    method through its settings, x = mean serving size in % of the full model (log), y = mean over
    seeds with error bars (95% CI when the aggregate has one, else ±1 std). The full model is a
    dashed reference line; the Pareto frontier (no smaller point is better) is a grey band with
    ringed points. A caption under the panels says all this."""
    quality = [s for s in specs if s.higher_is_better is not None]
    fig = _figure(4.4 * len(quality) + 1.8, 3.7)
    axes = fig.subplots(1, len(quality), squeeze=False)[0]
    size_col = f"{SIZE} mean"
    data = agg[agg["n"] > 0]
    multi_loss = data["loss"].nunique() > 1 if "loss" in data else False
    data = data.assign(_loss=data["loss"] if multi_loss else "")
    labels = pd.Series(
        [_method_label(rec) for _, rec in data.iterrows()], index=data.index, dtype=object
    )
    error_text = "no error bars"
    seeds = sorted({int(n) for n in data["n"]}) if "n" in data else []
    for ax, spec in zip(axes, quality):
        mean_col = f"{spec.column} mean"
        if mean_col not in data or size_col not in data or data.empty:
            ax.set_axis_off()
            continue
        error_text, low_col, high_col = error_columns(data, spec.column)
        points = []
        seen_in_method: dict[str, int] = {}
        order = sorted(set(labels), key=lambda lab: (not str(lab).startswith(FULL), str(lab)))
        for label in order:
            rows = data[labels == label]
            rows = rows.dropna(subset=[mean_col, size_col]).sort_values(size_col)
            if rows.empty:
                continue
            method = str(rows["method"].iloc[0])
            colour, marker = method_style(method)
            variant = seen_in_method.get(method, 0)
            seen_in_method[method] = variant + 1
            x, y = 100 * rows[size_col].to_numpy(), rows[mean_col].to_numpy()
            points += list(zip(x, y))
            if high_col is not None:
                yerr = np.vstack([y - rows[low_col].to_numpy(), rows[high_col].to_numpy() - y])
                yerr = np.nan_to_num(np.clip(yerr, 0, None))
            elif low_col is not None:
                yerr = rows[low_col].fillna(0).to_numpy()
            else:
                yerr = None
            if method == FULL:
                ax.axhline(y.mean(), color=colour, linestyle="--", linewidth=1)
                ax.errorbar(
                    x, y, yerr=yerr, fmt=marker, color=colour, capsize=2, markersize=5, label=label
                )
                continue
            ax.errorbar(x, y, yerr=yerr, marker=marker, markersize=5, capsize=2, color=colour,
                        linestyle=_LINESTYLES[variant % len(_LINESTYLES)], label=label)  # fmt: skip
        if not points:
            ax.set_axis_off()
            continue
        xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        front = pareto_front(xs, ys, bool(spec.higher_is_better))
        ax.step(xs[front], ys[front], where="post", color="0.6", linewidth=6, alpha=0.35, zorder=0,
                label="Pareto frontier" if ax is axes[0] else None)  # fmt: skip
        ax.scatter(xs[front], ys[front], s=110, facecolors="none", edgecolors="0.3", linewidths=1.2,
                   zorder=3)  # fmt: skip
        _percent_axis(ax, xs)
        ax.set_xlabel("serving size (% of the full model, log scale)")
        ax.set_ylabel(f"{spec.label} ({'higher' if spec.higher_is_better else 'lower'} is better)")
        ax.grid(True, which="major", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=7, title="method",
                   title_fontsize=8)  # fmt: skip
    n_text = (
        f"n = {seeds[0]} seeds"
        if len(seeds) == 1
        else f"n = {min(seeds)}-{max(seeds)} seeds per point"
        if seeds
        else ""
    )
    fig.text(0.01, 0.005, f"Points: mean over seeds ({n_text}); error bars: {error_text}; dashed: "
             "full model; grey band and rings: Pareto frontier (no smaller model is better).",
             fontsize=7, ha="left", va="bottom", wrap=True)  # fmt: skip
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return _save(fig, path)


def plot_training_loss(
    history: pd.DataFrame, runs: pd.DataFrame, path: str | Path, title: str = ""
) -> Path:
    """``history`` (run_id, epoch, value) of one section x backbone; ``runs`` (labelled) gives
    each run's method and setting. A line per (method, setting): mean over seeds per epoch with a
    ±std band, so a method that trains slower or less stably shows it. Epoch ticks are integers
    and every epoch has a marker, so a one-epoch run is a visible point. More than 8 lines (a
    budget sweep) become one panel per method with shared axes."""
    info = runs.assign(variant=runs["variant"] if "variant" in runs else "")
    info = info.drop_duplicates("run_id").set_index("run_id")
    merged = history.join(
        info[["method", "user_method", "setting", "variant"]], on="run_id", how="inner"
    )
    curves = list(merged.groupby(["method", "user_method", "setting", "variant"], sort=True))
    methods = sorted({str(k[0]) for k, _ in curves}, key=lambda m: (m != FULL, m))
    panels = methods if len(curves) > 8 else ["all"]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(
        7.6 if len(panels) == 1 else 3.2 * ncols + 0.4,
        3.6 if len(panels) == 1 else 2.6 * nrows + 0.6,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    where = {m: axes[panels.index(m)] if len(panels) > 1 else axes[0] for m in methods}
    if merged.empty:
        axes[0].text(0.5, 0.5, "no per-epoch training loss recorded", ha="center", va="center")
    seen_in_method: dict[str, int] = {}
    for (method, user_method, setting, variant_label), rows in curves:
        ax = where[str(method)]
        curve = rows.groupby("epoch")["value"].agg(["mean", "std"]).sort_index()
        epochs = curve.index.to_numpy()
        colour, marker = method_style(str(method))
        variant = seen_in_method.get(str(method), 0)
        seen_in_method[str(method)] = variant + 1
        style = (
            "--" if method == FULL and len(panels) == 1 else _LINESTYLES[variant % len(_LINESTYLES)]
        )
        label = short(
            row_label(method, user_method, setting, "", variant_label)
            if len(panels) == 1
            else (setting or variant_label or method)
        )
        ax.plot(epochs, curve["mean"], color=colour, linestyle=style, marker=marker,
                markersize=4 if len(epochs) > 1 else 7, label=label)  # fmt: skip
        std = curve["std"].fillna(0).to_numpy()
        ax.fill_between(epochs, curve["mean"] - std, curve["mean"] + std, color=colour, alpha=0.15)
    for k, ax in enumerate(axes):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(labelbottom=True)
        ax.grid(True, alpha=0.3)
        if len(panels) > 1:
            ax.set_title(panels[k], fontsize=9, color=method_style(panels[k])[0])
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    if not merged.empty and merged["epoch"].nunique() == 1:
        e = float(merged["epoch"].iloc[0])
        axes[0].set_xlim(e - 1, e + 1)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel("training loss (mean over seeds, band ±1 std)", fontsize=9)
    if title and len(panels) == 1:
        axes[0].set_title(title, fontsize=10)
    elif title:
        fig.suptitle(title, fontsize=10)
    if len(panels) == 1 and axes[0].get_legend_handles_labels()[0]:
        fig.legend(loc="outside right upper", fontsize=7, title="method", title_fontsize=8)
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


def similarity_labels(
    categories: Sequence[Sequence[str]],
    max_categories: int = 15,
    labels: Sequence[str] | None = None,
) -> list[str]:
    """The categories a heatmap shows: ``labels`` (checked to exist), else the ``max_categories``
    most frequent."""
    freq: dict[str, int] = {}
    for cats in categories:
        for c in set(cats):
            freq[c] = freq.get(c, 0) + 1
    if labels:
        unknown = [c for c in labels if c not in freq]
        if unknown:
            raise ValueError(f"no item has categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                             f"known: {', '.join(sorted(freq))}")  # fmt: skip
        return list(labels)
    return sorted(freq, key=lambda c: (-freq[c], c))[:max_categories]


def draw_code_similarity(
    matrix: np.ndarray,
    labels: Sequence[str],
    sizes: Sequence[int],
    path: str | Path,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """The heatmap of one similarity matrix; ``vmin``/``vmax`` give every heatmap of a report the
    same colour scale (so a darker cell means fewer shared codes in every figure) and each tick
    label carries its category's item count."""
    names = [f"{c} ({n:,})" for c, n in zip(labels, sizes)]
    side = 3.0 + 0.38 * len(labels)
    fig = _figure(side + 1.4, side)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("category (items)", fontsize=8)
    fig.colorbar(image, ax=ax, label="mean fraction of code positions shared")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_code_similarity(
    codes: np.ndarray,
    categories: Sequence[Sequence[str]],
    path: str | Path,
    max_categories: int = 15,
    title: str = "",
    labels: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Heatmap of ``code_similarity_matrix`` over ``labels`` (default: the ``max_categories`` most
    frequent categories) (Figure 8 style): a quantised embedding that learned the catalogue should
    share more codes within a category (diagonal) than across. Returns the matrix and its labels."""
    labels = similarity_labels(categories, max_categories, labels)
    matrix, labels = code_similarity_matrix(codes, categories, labels)
    sizes = [sum(1 for cats in categories if c in cats) for c in labels]
    draw_code_similarity(matrix, labels, sizes, path, title, vmin, vmax)
    return matrix, labels
