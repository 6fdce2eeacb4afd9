"""Aggregation over seeds and the paper-style tables (Markdown, LaTeX, CSV): pure functions.

Why pure functions on DataFrames: the numbers in a paper table must be checkable by hand; keeping
every step (labelling, de-duplicating, aggregating, marking, formatting) free of I/O lets the tests
feed hand-made frames and compare with hand-computed means and standard deviations.

Layout: one table per (dataset, evaluation protocol, task kind); rows = methods (with their size
setting); a column group per backbone with HR@10, NDCG@10 (or RMSE, MAE for rating runs), the
model size in % of the full-embedding model at the runs' reference dimension (``eval.reference_dim``,
default 64), and the number of seeds. "mean ± std" uses the sample
standard deviation (ddof=1) over seeds. A compressed method's cell is marked (``*`` / ``\\dag``)
where its mean reaches the full model's mean for that backbone: >= for HR/NDCG, <= for RMSE/MAE.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: A table per section; its rows per row key; its column groups per model.
SECTION_KEYS = ("dataset", "eval_protocol", "task_kind")
ROW_KEYS = ("method", "user_method", "setting", "loss")
GROUP_KEYS = (*SECTION_KEYS, "model", *ROW_KEYS)
SIZE = "size/fraction_of_full"
FULL = "full"
MARK_MD = "*"
MARK_TEX = r"\dag"
#: Tolerance for "reaches": means computed from equal values must compare equal.
_EPS = 1e-12


@dataclass(frozen=True)
class MetricSpec:
    """One column of a backbone's group: where it comes from and which way is better."""

    label: str
    column: str
    higher_is_better: bool | None  # None: not a quality metric (the size), never marked
    scale: float = 1.0


def task_kind(task: str) -> str:
    """Rating runs report RMSE/MAE; every other task (ranking, sequential) ranks items."""
    return "rating" if str(task) == "rating" else "ranking"


def metric_specs(kind: str, columns: Sequence[str]) -> list[MetricSpec]:
    """The table's columns for one task kind. Ranking uses HR@k and NDCG@k at k = 10 when it was
    recorded, else the smallest k recorded (``eval.k`` can change it)."""
    size = MetricSpec("Size %", SIZE, None, 100.0)
    if kind == "rating":
        return [MetricSpec("RMSE", "test/rmse", False), MetricSpec("MAE", "test/mae", False), size]
    ks = sorted(
        int(m.group(1)) for c in columns if (m := re.fullmatch(r"test/hr_at_(\d+)", str(c)))
    )
    k = 10 if (10 in ks or not ks) else ks[0]
    return [
        MetricSpec(f"HR@{k}", f"test/hr_at_{k}", True),
        MetricSpec(f"NDCG@{k}", f"test/ndcg_at_{k}", True),
        size,
    ]


# ---------------------------------------------------------------------------------------------
# Per-run preparation


def split_status(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(FINISHED runs, all others: FAILED, KILLED, still RUNNING). Only finished runs have final
    metrics; the others are counted and listed, never averaged."""
    done = runs["status"] == "FINISHED"
    return runs[done].copy(), runs[~done].copy()


def drop_duplicates(finished: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the latest finished run per ``config_hash`` (which covers the seed): a configuration
    recorded twice (a re-run) must count once, or its seed would weigh double in the mean."""
    if finished.empty or "config_hash" not in finished:
        return finished, 0
    has_hash = finished["config_hash"].fillna("") != ""
    keyed = finished[has_hash].sort_values("start_time", kind="stable")
    kept = keyed.drop_duplicates("config_hash", keep="last")
    out = pd.concat([kept, finished[~has_hash]]).sort_index()
    return out, len(finished) - len(out)


def add_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``task_kind`` and ``setting`` (what distinguishes runs of one method: the budget tag, or
    else the knobs that take more than one value among that method's runs), and fill blanks so
    that grouping never drops rows with missing keys."""
    out = runs.copy()
    for key in ("dataset", "model", "method", "user_method", "loss", "eval_protocol", "budget"):
        if key not in out:
            out[key] = ""
        out[key] = out[key].fillna("").astype(str)
    out["eval_protocol"] = out["eval_protocol"].replace("", "full")
    out["task_kind"] = out["task"].fillna("").map(task_kind) if "task" in out else "ranking"
    knobs = out["knobs"].fillna("{}") if "knobs" in out else pd.Series("{}", index=out.index)
    parsed = knobs.map(json.loads)
    varying: dict[str, list[str]] = {}
    for method, idx in out.groupby("method").groups.items():
        values: dict[str, set[str]] = {}
        for knob in parsed.loc[idx]:
            for k, v in knob.items():
                values.setdefault(k, set()).add(v)
        for knob in parsed.loc[idx]:  # a knob absent from some runs varies too
            for k in values:
                if k not in knob:
                    values[k].add("")
        varying[str(method)] = sorted(k for k, v in values.items() if len(v) > 1)
    settings = []
    for method, budget, knob in zip(out["method"], out["budget"], parsed):
        if budget:
            settings.append(f"budget={_number(budget)}")
        else:
            settings.append(", ".join(f"{k}={knob.get(k, '')}" for k in varying.get(method, [])))
    out["setting"] = settings
    return out


def _number(text: str) -> str:
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


# ---------------------------------------------------------------------------------------------
# Aggregation


def summary_metrics(columns: Sequence[str]) -> list[str]:
    """Metric columns worth averaging: final test, size, time, fit and popularity numbers. Per-epoch
    ``train/`` and ``val/`` series are left out: MLflow's "latest value" of them is the last
    epoch's, not the best epoch's, so a mean of it would mislead."""
    keep = ("test/", "size/", "time/", "fit/", "popularity/")
    return sorted(c for c in columns if str(c).startswith(keep))


def aggregate(
    finished: pd.DataFrame, unfinished: pd.DataFrame | None = None, metrics: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per ``GROUP_KEYS`` group: ``n`` finished runs, ``n_failed`` others, and for each
    metric column ``<metric> mean`` and ``<metric> std`` (sample std, NaN for a single seed).

    Both frames must have gone through ``add_labels``. Groups with only failed runs get a row with
    n = 0 and NaN metrics, so a table shows that a combination was tried and failed."""
    keys = list(GROUP_KEYS)
    metrics = list(metrics) or summary_metrics(finished.columns)
    frames: list[pd.DataFrame | pd.Series] = []
    if not finished.empty:
        grouped = finished.groupby(keys, sort=True, dropna=False)
        frames.append(grouped.size().rename("n"))
        if metrics:
            stats = grouped[metrics].agg(["mean", "std"])
            stats.columns = [f"{metric} {stat}" for metric, stat in stats.columns]
            frames.append(stats)
    if unfinished is not None and not unfinished.empty:
        frames.append(unfinished.groupby(keys, sort=True, dropna=False).size().rename("n_failed"))
    if not frames:
        return pd.DataFrame(columns=[*keys, "n", "n_failed"])
    table = pd.concat(frames, axis=1).sort_index()
    if "n" not in table:
        table["n"] = 0
    if "n_failed" not in table:
        table["n_failed"] = 0
    table["n"] = table["n"].fillna(0).astype(int)
    table["n_failed"] = table["n_failed"].fillna(0).astype(int)
    return table.reset_index()


def mark_reaches_full(agg: pd.DataFrame, specs_for: dict[str, list[MetricSpec]]) -> pd.DataFrame:
    """Add ``<metric> full`` (the full model's mean for the same section and backbone) and
    ``<metric> reaches_full`` (True where a compressed method's mean is at least as good).

    The reference is the ``full`` row with the same loss when there is one, else the full row with
    the most runs; ``specs_for`` maps a task kind to its metrics."""
    out = agg.copy()
    quality = sorted(
        {s.column for specs in specs_for.values() for s in specs if s.higher_is_better is not None}
    )
    better = {
        s.column: s.higher_is_better for specs in specs_for.values() for s in specs
    }
    for column in quality:
        out[f"{column} full"] = np.nan
        out[f"{column} reaches_full"] = False
    if out.empty:
        return out
    is_full = (out["method"] == FULL) & out["user_method"].isin(["", FULL]) & (out["n"] > 0)
    for _, idx in out.groupby([*SECTION_KEYS, "model"], sort=False).groups.items():
        block = out.loc[idx]
        refs = block[is_full.loc[idx]]
        if refs.empty:
            continue
        for i in idx:
            same_loss = refs[refs["loss"] == out.at[i, "loss"]]
            ref = (same_loss if not same_loss.empty else refs).sort_values("n").iloc[-1]
            for column in quality:
                mean_col = f"{column} mean"
                if mean_col not in out:
                    continue
                full_mean = ref.get(mean_col, np.nan)
                out.at[i, f"{column} full"] = full_mean
                mean = out.at[i, mean_col]
                if is_full.at[i] or pd.isna(mean) or pd.isna(full_mean):
                    continue
                hit = mean >= full_mean - _EPS if better[column] else mean <= full_mean + _EPS
                out.at[i, f"{column} reaches_full"] = bool(hit)
    return out


# ---------------------------------------------------------------------------------------------
# Paper tables


@dataclass
class Cell:
    mean: float
    std: float
    mark: bool = False


@dataclass
class PaperTable:
    """One section's table, independent of the output format."""

    section: dict[str, str]
    models: list[str]
    specs: list[MetricSpec]
    rows: list[dict[str, str]]  # row keys + "label"
    cells: dict[tuple[int, str, str], Cell] = field(default_factory=dict)  # (row, model, label)
    counts: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # n, n_failed

    @property
    def title(self) -> str:
        s = self.section
        return f"{s['dataset']} — {s['task_kind']}, {s['eval_protocol']} evaluation"


def row_label(method: str, user_method: str, setting: str, loss: str) -> str:
    """``dpq (users=full, budget=0.25, loss=bpr)``: the method and what sets its row apart."""
    extras = [f"users={user_method}"] if user_method and user_method != method else []
    extras += [setting] if setting else []
    extras += [f"loss={loss}"] if loss else []
    return method + (f" ({', '.join(extras)})" if extras else "")


def build_tables(agg: pd.DataFrame) -> list[PaperTable]:
    """Aggregated rows (after ``mark_reaches_full``) -> one ``PaperTable`` per section.

    The loss enters the row label only where a backbone has runs with several losses; rows are
    ordered full first, then by method name and by decreasing size."""
    tables = []
    if agg.empty:
        return tables
    for section_values, block in agg.groupby(list(SECTION_KEYS), sort=True):
        section = dict(zip(SECTION_KEYS, map(str, section_values)))
        columns = [c.removesuffix(" mean") for c in block.columns if c.endswith(" mean")]
        specs = metric_specs(section["task_kind"], columns)
        multi_loss = bool((block.groupby("model")["loss"].nunique() > 1).any())
        block = block.assign(_loss=block["loss"] if multi_loss else "")
        size_col = f"{SIZE} mean"
        sizes = block.groupby(["method", "user_method", "setting", "_loss"])
        order = []
        for key, rows in sizes:
            size = rows[size_col].mean() if size_col in rows else np.nan
            method = key[0]
            order.append((method != FULL, method, -size if not pd.isna(size) else 0.0, key))
        order.sort(key=lambda t: t[:3] + (str(t[3]),))
        row_keys = [t[3] for t in order]
        table = PaperTable(
            section=section,
            models=sorted(block["model"].unique()),
            specs=specs,
            rows=[
                {"method": m, "user_method": u, "setting": s, "loss": lo,
                 "label": row_label(m, u, s, lo)}
                for m, u, s, lo in row_keys
            ],  # fmt: skip
        )
        index = {key: i for i, key in enumerate(row_keys)}
        for _, rec in block.iterrows():
            i = index[(rec["method"], rec["user_method"], rec["setting"], rec["_loss"])]
            model = rec["model"]
            table.counts[(i, model)] = (int(rec["n"]), int(rec["n_failed"]))
            for spec in specs:
                mean = rec.get(f"{spec.column} mean", np.nan)
                if pd.isna(mean):
                    continue
                std = rec.get(f"{spec.column} std", np.nan)
                table.cells[(i, model, spec.label)] = Cell(
                    float(mean) * spec.scale,
                    float(std) * spec.scale if not pd.isna(std) else math.nan,
                    bool(rec.get(f"{spec.column} reaches_full", False)),
                )
        tables.append(table)
    return tables


def format_cell(cell: Cell | None, spec: MetricSpec, tex: bool = False) -> str:
    """``0.5120 ± 0.0100`` (4 decimals; sizes as % with fewer), mark appended; ``–`` if absent."""
    if cell is None:
        return "--" if tex else "–"
    if spec.higher_is_better is None:
        text = _size_text(cell.mean)
        if not math.isnan(cell.std) and cell.std > 1e-9:
            text += (r" \pm " if tex else " ± ") + _size_text(cell.std)
    else:
        text = f"{cell.mean:.4f}"
        if not math.isnan(cell.std):
            text += (r" \pm " if tex else " ± ") + f"{cell.std:.4f}"
    if tex:
        return f"${text}$" + (MARK_TEX if cell.mark else "")
    return text + (MARK_MD if cell.mark else "")


def _size_text(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def _count_text(counts: tuple[int, int] | None) -> str:
    if counts is None:
        return "–"
    n, failed = counts
    return f"{n} (+{failed} failed)" if failed else str(n)


def to_markdown(tables: Sequence[PaperTable]) -> str:
    """All sections as Markdown tables; header cells are ``<backbone> <metric>``."""
    parts = []
    for t in tables:
        header = ["Method"]
        for model in t.models:
            header += [f"{model} {s.label}" for s in t.specs] + [f"{model} n"]
        lines = [f"### {t.title}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for i, row in enumerate(t.rows):
            cells = [row["label"]]
            for model in t.models:
                cells += [format_cell(t.cells.get((i, model, s.label)), s) for s in t.specs]
                cells.append(_count_text(t.counts.get((i, model))))
            lines.append("| " + " | ".join(cells) + " |")
        quality = "/".join(s.label for s in t.specs if s.higher_is_better is not None)
        direction = ">=" if any(s.higher_is_better for s in t.specs) else "<="
        lines += [
            "",
            f"mean ± sample std over n seeds; Size % = serving size / full float32 model at the "
            f"reference d (eval.reference_dim, default 64); "
            f"`{MARK_MD}` = mean {direction} the full model's mean for that backbone ({quality}).",
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---",
}  # fmt: skip


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(tables: Sequence[PaperTable]) -> str:
    """All sections as booktabs tables (needs ``\\usepackage{booktabs}``), a column group per
    backbone."""
    parts = []
    for t in tables:
        width = len(t.specs) + 1
        cols = "l" + (" " + "c" * width) * len(t.models)
        group = " & ".join(
            rf"\multicolumn{{{width}}}{{c}}{{{tex_escape(m)}}}" for m in t.models
        )
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + j * width}-{1 + (j + 1) * width}}}" for j in range(len(t.models))
        )
        names = [tex_escape(s.label) for s in t.specs] + ["$n$"]
        direction = r"$\geq$" if any(s.higher_is_better for s in t.specs) else r"$\leq$"
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{tex_escape(t.title)}: mean $\pm$ sample std over $n$ seeds; "
            rf"{MARK_TEX}: mean {direction} the full model's mean for that backbone.}}",
            rf"\begin{{tabular}}{{{cols}}}",
            r"\toprule",
            rf" & {group} \\",
            rules,
            "Method & " + " & ".join(names * len(t.models)) + r" \\",
            r"\midrule",
        ]
        for i, row in enumerate(t.rows):
            cells = [tex_escape(row["label"])]
            for model in t.models:
                cells += [format_cell(t.cells.get((i, model, s.label)), s, tex=True) for s in t.specs]
                counts = t.counts.get((i, model))
                cells.append(str(counts[0]) if counts else "--")
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv_frame(tables: Sequence[PaperTable]) -> pd.DataFrame:
    """The paper tables as one wide numeric frame: a row per (section, method row), columns
    ``<backbone> <metric> mean|std|reaches_full`` and ``<backbone> n|failed`` (full precision)."""
    records = []
    for t in tables:
        for i, row in enumerate(t.rows):
            rec: dict[str, object] = {**t.section, **{k: row[k] for k in ROW_KEYS}, "label": row["label"]}
            for model in t.models:
                for s in t.specs:
                    cell = t.cells.get((i, model, s.label))
                    rec[f"{model} {s.label} mean"] = cell.mean if cell else np.nan
                    rec[f"{model} {s.label} std"] = cell.std if cell else np.nan
                    if s.higher_is_better is not None:
                        rec[f"{model} {s.label} reaches_full"] = bool(cell and cell.mark)
                n, failed = t.counts.get((i, model), (0, 0))
                rec[f"{model} n"] = n
                rec[f"{model} failed"] = failed
            records.append(rec)
    frame = pd.DataFrame(records)
    for column in frame.columns:  # counts stay integers where a section lacks the backbone
        if column.endswith((" n", " failed")):
            frame[column] = frame[column].astype("Int64")
    return frame


@dataclass
class Report:
    """Everything the CLI writes, computed from the loaded runs."""

    runs: pd.DataFrame  # labelled, all statuses
    finished: pd.DataFrame  # labelled, de-duplicated
    unfinished: pd.DataFrame
    duplicates: int
    aggregated: pd.DataFrame
    tables: list[PaperTable]


def make_report(runs: pd.DataFrame) -> Report:
    """Loaded runs -> labelled, de-duplicated, aggregated, marked, tabulated."""
    labelled = add_labels(runs)
    finished, unfinished = split_status(labelled)
    finished, duplicates = drop_duplicates(finished)
    kinds = sorted(set(labelled["task_kind"])) or ["ranking"]
    specs_for = {kind: metric_specs(kind, list(labelled.columns)) for kind in kinds}
    agg = aggregate(finished, unfinished, summary_metrics(labelled.columns))
    agg = mark_reaches_full(agg, specs_for)
    return Report(labelled, finished, unfinished, duplicates, agg, build_tables(agg))


def failed_frame(unfinished: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not finish, with what is needed to find and re-run them."""
    columns = ["run_id", "status", "dataset", "model", "method", "user_method", "setting", "seed",
               "loss", "eval_protocol", "error", "run_dir", "store_experiment"]  # fmt: skip
    out = unfinished.reindex(columns=columns)
    return out.sort_values(["dataset", "model", "method", "seed"], kind="stable").reset_index(drop=True)
