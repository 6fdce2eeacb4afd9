"""Aggregation over seeds and the paper-style tables (Markdown, LaTeX, CSV): pure functions.

Why pure functions on DataFrames: the numbers in a paper table must be checkable by hand; keeping
every step (labelling, resolving skips, de-duplicating, forming cells, aggregating, testing,
formatting) free of I/O lets the tests feed hand-made frames and compare with hand computations.

Layout: one table per (dataset, evaluation protocol, task kind); rows = methods (with their size
setting); a column group per backbone with HR@10, NDCG@10 (or RMSE, MAE for rating runs), the
model size in % of the full-embedding model at the runs' reference dimension
(``eval.reference_dim``, default 64), and the number of seeds.

What is pooled: a table cell averages the runs of one *cell* (``recbench.report.cells``): runs whose
recorded configurations are identical except for the seed (and keys that cannot change a result).
Runs with the same labels but other settings (``train.epochs``, ``train.lr``, ...) become separate
rows whose label names the differing settings, and the report lists them in its notes. A seed that
appears twice in a cell (a re-run) counts once (the latest run). A cell that mixes code versions
(tags ``code_version``, ``git_commit``, ``git_dirty``) is pooled but warned about.

Numbers: mean ± sample standard deviation (ddof = 1) over the n seeds, and a 95 % Student-t
confidence interval of the mean, mean ± t(0.975, n-1)·s/sqrt(n) (none for n = 1).

Marks: a compressed cell is compared with the full-embedding cell of the same dataset, protocol,
backbone, loss and the same settings apart from the method's own keys, over the seeds both have
(``recbench.report.stats``: paired t-test on per-seed differences, at least 3 paired seeds, else no
test and no mark):

* ``**`` (LaTeX ``\\ddag``) "beats full": the mean is better and the two-sided paired p < 0.05;
* ``*`` (LaTeX ``\\dag``) "reaches full": shown to be no worse than the full model by more than the
  margin δ (default 1 % of the full model's mean over the paired seeds): one-sided paired
  non-inferiority t-test, p < 0.05.

No mark means "not shown", never "equal": a non-significant difference over 3 noisy seeds is not
evidence that two methods are equivalent. The CSV keeps the p-values (two-sided, non-inferiority,
Wilcoxon signed-rank) and the verdict (``beats``, ``reaches``, ``worse``, ``inconclusive``,
``too few pairs``, ``no reference``) of every compressed cell.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recbench import record
from recbench.record import BUDGET_FLOOR
from recbench.report.cells import assign_cells, parse_config, reference_key
from recbench.report.stats import (
    ALPHA,
    BEATS,
    DEFAULT_MARGIN,
    MIN_PAIRS,
    REACHES,
    compare_paired,
    summarize,
)
from recbench.tracking import FOLLOWS_SEED, is_hash_seed

#: A table per section; its rows per row key; its column groups per model.
SECTION_KEYS = ("dataset", "eval_protocol", "task_kind")
ROW_KEYS = ("method", "user_method", "setting", "loss", "variant")
GROUP_KEYS = (*SECTION_KEYS, "model", *ROW_KEYS)
#: The labels a cell must share with the runs pooled into it (``variant`` comes from the cells).
LABEL_KEYS = tuple(k for k in GROUP_KEYS if k != "variant")
SIZE = "size/fraction_of_full"
FULL = "full"
MARK_MD = {REACHES: "*", BEATS: "**"}
MARK_TEX = {REACHES: r"\dag", BEATS: r"\ddag"}
NO_REFERENCE = "no reference"
#: Per-metric statistics columns of ``aggregate`` (``<metric> <stat>``).
STATS = ("n", "mean", "std", "ci_low", "ci_high")
#: Per-metric comparison columns added by ``compare_with_full``.
COMPARISON = ("full", "n_paired", "diff", "p_value", "p_noninferior", "p_wilcoxon", "verdict",
              "reaches_full", "beats_full")  # fmt: skip


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
        names = [record.metric_name("rmse"), record.metric_name("mae")]
    else:
        parsed = [record.parse_metric(c) for c in columns]
        hr_at = [m for m in parsed if m.prefix == record.TEST and m.base == "hr"]
        ks = sorted(m.k for m in hr_at if m.k is not None)
        k = 10 if (10 in ks or not ks) else ks[0]
        names = [record.metric_name("hr", k), record.metric_name("ndcg", k)]
    specs = []
    for name in names:
        column = record.key(record.TEST, name)
        specs.append(MetricSpec(record.metric_label(column), column, record.higher_is_better(name)))
    return [*specs, size]


# ---------------------------------------------------------------------------------------------
# Per-run preparation


def unreachable_mask(members: pd.DataFrame) -> pd.Series:
    """Runs of the cells whose every run FAILED because the method cannot reach the cell's budget
    (a recorded ``budget_floor``, ``recbench.record.BUDGET_FLOOR``). Such a cell is a property of
    the method, not a broken run: it is shown as "not reachable (min X %)" and kept out of the
    failures. A cell with any other run (finished, running, failed otherwise) is left as it is."""
    if members.empty or record.BUDGET_FLOOR not in members:
        return pd.Series(False, index=members.index, dtype=bool)
    floor = pd.to_numeric(members[record.BUDGET_FLOOR], errors="coerce")
    hit = (members["status"] == "FAILED") & floor.notna()
    keys = [members[k].astype(str) for k in (*GROUP_KEYS, "cell")]
    return hit.groupby(keys, sort=False, dropna=False).transform("all").astype(bool)


def requested_size(setting: str) -> float:
    """The size in % of full a row's ``budget=B`` setting asks for (NaN without one): rows with no
    finished run (a budget below the method's floor) sort among the others by it, so that a
    method's rows read 50 %, 25 %, 10 %, 5 % whether or not each was reachable."""
    found = re.search(r"(?:^|, )budget=([0-9.eE+-]+)", setting)
    try:
        return 100 * float(found.group(1)) if found else math.nan
    except ValueError:
        return math.nan


def unreachable_text(floor: float) -> str:
    """``not reachable (min 7.8 %)``: the cell's budget is below the method's floor (in % of the
    full table: one decimal from 1 %, two significant digits below)."""
    value = 100 * float(floor)
    text = f"{value:.1f}".rstrip("0").rstrip(".") if value >= 1 else f"{value:.2g}"
    return f"not reachable (min {text} %)"


def split_status(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(FINISHED runs, all others: FAILED, KILLED, LOST, still RUNNING, unresolved SKIPPED, ...).
    Only finished runs have final metrics; the others are counted per state, never averaged."""
    done = runs["status"] == "FINISHED"
    return runs[done].copy(), runs[~done].copy()


def resolve_skipped(runs: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """A SKIPPED run folder is a pointer to the FINISHED run with the same configuration (its
    ``same_as``): dropped when that run is among the loaded ones (same run id or folder, or same
    ``config_hash``), else it stands for it (status FINISHED with the twin's recorded metrics).
    Without a twin's metrics it stays SKIPPED. Returns (runs, dropped, stood in)."""
    if runs.empty or not (runs["status"] == "SKIPPED").any():
        return runs, 0, 0
    out = runs.copy()
    finished = out[out["status"] == "FINISHED"]
    known_ids = set(finished["run_id"].astype(str))
    known_dirs = {
        _norm_path(d) for d in finished.get("run_dir", pd.Series(dtype=str)).fillna("") if d
    }
    known_hashes = {h for h in finished["config_hash"].fillna("").astype(str) if h}
    metric_cols = [c for c in out.columns if record.parse_metric(c).prefix == record.TEST]
    drop, stood = [], 0
    for i in out.index[out["status"] == "SKIPPED"]:
        same_as = str(out.at[i, "same_as"] or "") if "same_as" in out else ""
        config = str(out.at[i, "config_hash"] or "")
        if (same_as and (same_as in known_ids or _norm_path(same_as) in known_dirs)) or (
            config in known_hashes
        ):
            drop.append(i)
        elif metric_cols and out.loc[i, metric_cols].notna().any():
            out.at[i, "status"] = "FINISHED"
            stood += 1
    return out.drop(index=drop), len(drop), stood


def _norm_path(text: str) -> str:
    return re.sub(r"/+$", "", str(text))


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


def drop_seed_duplicates(members: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Within a cell, one run per seed (the latest): runs with equal cells and seeds repeat the
    same experiment (e.g. recorded under two presets), so both would weigh one seed double. Runs
    without a recorded config (cell "") are left alone: nothing says they repeat each other."""
    if members.empty:
        return members, 0
    keyed = members[members["cell"] != ""].sort_values("start_time", kind="stable")
    kept = keyed.drop_duplicates([*GROUP_KEYS, "cell", "seed"], keep="last")
    out = pd.concat([kept, members[members["cell"] == ""]]).sort_index()
    return out, len(members) - len(out)


def add_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``task_kind`` and ``setting`` (what distinguishes runs of one method: the budget tag, or
    else the knobs that take more than one value among that method's runs), and fill blanks so
    that grouping never drops rows with missing keys. ``variant`` starts empty (see ``cells``)."""
    out = runs.copy()
    for key in ("dataset", "model", "method", "user_method", "loss", "eval_protocol", "budget",
                "config", "cell_hash", "same_as", "config_hash"):  # fmt: skip
        if key not in out:
            out[key] = ""
        out[key] = out[key].fillna("").astype(str)
    out["eval_protocol"] = out["eval_protocol"].replace("", "full")
    out["task_kind"] = out["task"].fillna("").map(task_kind) if "task" in out else "ranking"
    out["variant"] = ""
    knobs = out["knobs"].fillna("{}") if "knobs" in out else pd.Series("{}", index=out.index)
    seeds = out["seed"].astype(str) if "seed" in out else pd.Series("", index=out.index)
    # a hash seed equal to the run seed follows the seed (the default): not a setting of its own
    parsed = pd.Series(
        [_seed_following(json.loads(k), s) for k, s in zip(knobs, seeds)], index=out.index
    )
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


def _seed_following(knobs: dict, seed: str) -> dict:
    """``knobs`` with every ``hash_seed`` equal to ``seed`` written as ``FOLLOWS_SEED``."""
    return {k: FOLLOWS_SEED if is_hash_seed(k) and str(v) == seed else v for k, v in knobs.items()}


def _number(text: str) -> str:
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def code_identity(run: pd.Series) -> str:
    """The run's ``code_identity`` tag (recbench.provenance), else ``<code_version>@<git_commit[:12]>
    [+dirty]`` from older tags; "" when nothing is recorded."""
    recorded = str(run.get("code_identity") or "").strip()
    if recorded not in ("", "nan"):
        return recorded
    version = str(run.get("code_version") or "").strip()
    commit = str(run.get("git_commit") or "").strip()
    if version in ("", "nan") and commit in ("", "nan"):
        return ""
    dirty = str(run.get("git_dirty") or "").strip().lower() in ("true", "1", "yes")
    return f"{version if version != 'nan' else '?'}@{commit[:12] if commit != 'nan' else '?'}" + (
        "+dirty" if dirty else ""
    )


# ---------------------------------------------------------------------------------------------
# Aggregation


def summary_metrics(columns: Sequence[str]) -> list[str]:
    """Metric columns worth averaging: final test, size, time, fit and popularity numbers. Per-epoch
    ``train/`` and ``val/`` series are left out: MLflow's "latest value" of them is the last
    epoch's, not the best epoch's, so a mean of it would mislead."""
    keep = (record.TEST, "size", "time", "fit", record.POPULARITY)
    return sorted(c for c in columns if str(c).startswith(tuple(f"{p}/" for p in keep)))


def _where(rec: pd.Series | dict) -> str:
    keys = (
        "dataset",
        "eval_protocol",
        "model",
        "method",
        "user_method",
        "setting",
        "loss",
        "variant",
    )
    return " / ".join(
        str(rec[k]) for k in keys if str(rec.get(k, "")) not in ("", "full") or k == "method"
    )


def aggregate(
    finished: pd.DataFrame,
    unfinished: pd.DataFrame | None = None,
    metrics: Sequence[str] = (),
    unreachable: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per cell (``GROUP_KEYS`` + ``cell``): ``n`` finished runs, the unfinished ones per
    state (``n_failed`` = FAILED, ``n_unfinished`` = all, ``unfinished`` = "1 failed, 1 running"),
    and for each metric ``<metric> n|mean|std|ci_low|ci_high`` (``stats.summarize``); also the
    cell's ``settings``, ``ref_key``, finished ``seeds`` and ``code`` identities. Cells of
    ``unreachable`` runs (``unreachable_mask``) get ``budget_floor`` (the largest recorded floor)
    and ``n_unreachable`` (their runs), and count no failure.

    Both frames must have gone through ``add_labels`` (a ``cell`` column is added as "" where
    missing, i.e. pooled by labels). Cells with only unfinished runs get a row with n = 0 and NaN
    metrics, so a table shows that a combination was tried and did not finish."""
    keys = [*GROUP_KEYS, "cell"]
    metrics = list(metrics) or summary_metrics(finished.columns)
    records: dict[tuple, dict] = {}

    def record(key: tuple, block: pd.DataFrame) -> dict:
        if key not in records:
            rec = dict(zip(keys, key))
            rec.update(n=0, n_failed=0, n_unfinished=0, unfinished="", seeds="[]", code="",
                       budget_floor=math.nan, n_unreachable=0,
                       settings=str(block["settings"].iloc[0]) if "settings" in block else "",
                       ref_key=str(block["ref_key"].iloc[0]) if "ref_key" in block else "")  # fmt: skip
            for metric in metrics:
                rec.update({f"{metric} {s}": (0 if s == "n" else math.nan) for s in STATS})
            records[key] = rec
        return records[key]

    for frame in (finished, unfinished):
        if frame is not None and not frame.empty and "cell" not in frame:
            frame["cell"] = ""
    if not finished.empty:
        for key, block in finished.groupby(keys, sort=True, dropna=False):
            rec = record(key, block)
            rec["n"] = len(block)
            seeds = sorted(block["seed"].astype(str), key=lambda s: (len(s), s))
            rec["seeds"] = json.dumps(seeds)
            ids = block.apply(code_identity, axis=1) if len(block) else pd.Series(dtype=str)
            known = sorted(set(ids[ids != ""]))
            unknown = int((ids == "").sum())
            rec["code"] = "; ".join(
                known + ([f"unrecorded x{unknown}"] if known and unknown else [])
            )
            for metric in metrics:
                if metric in block:
                    s = summarize(block[metric].astype(float).tolist())
                    rec.update({f"{metric} {k}": getattr(s, k) for k in STATS})
    if unfinished is not None and not unfinished.empty:
        for key, block in unfinished.groupby(keys, sort=True, dropna=False):
            rec = record(key, block)
            counts = block["status"].astype(str).value_counts()
            rec["n_failed"] = int(counts.get("FAILED", 0))
            rec["n_unfinished"] = int(counts.sum())
            rec["unfinished"] = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    if unreachable is not None and not unreachable.empty:
        for key, block in unreachable.groupby(keys, sort=True, dropna=False):
            rec = record(key, block)
            rec["budget_floor"] = float(pd.to_numeric(block[BUDGET_FLOOR], errors="coerce").max())
            rec["n_unreachable"] = len(block)
    if not records:
        return pd.DataFrame(columns=[*keys, "n", "n_failed", "n_unfinished"])
    table = pd.DataFrame([records[k] for k in sorted(records)])
    for column in ("n", "n_failed", "n_unfinished", "n_unreachable"):
        table[column] = table[column].astype(int)
    return table.reset_index(drop=True)


def per_seed_values(
    finished: pd.DataFrame, metrics: Sequence[str]
) -> dict[tuple, dict[str, dict[str, float]]]:
    """(``GROUP_KEYS`` + cell) -> metric -> seed -> value: what the paired tests pair."""
    out: dict[tuple, dict[str, dict[str, float]]] = {}
    if finished.empty:
        return out
    keys = [*GROUP_KEYS, "cell"]
    for key, block in finished.groupby(keys, sort=False, dropna=False):
        out[key] = {
            m: {str(s): float(v) for s, v in zip(block["seed"], block[m]) if not pd.isna(v)}
            for m in metrics if m in block
        }  # fmt: skip
    return out


def compare_with_full(
    agg: pd.DataFrame,
    values: dict[tuple, dict[str, dict[str, float]]],
    specs_for: dict[str, list[MetricSpec]],
    margin: float = DEFAULT_MARGIN,
) -> pd.DataFrame:
    """Add, per quality metric, the comparison with the full model (``COMPARISON`` columns):
    ``<metric> full`` (the reference cell's mean), ``n_paired``, ``diff`` (mean per-seed
    difference, compressed - full), ``p_value``, ``p_noninferior``, ``p_wilcoxon``, ``verdict``
    and the booleans ``reaches_full`` / ``beats_full`` that the marks show.

    The reference is a full-embedding cell (``method`` and ``user_method`` full) of the same
    section, backbone and loss with the same ``ref_key`` (the config without the method's keys);
    among several, the one sharing the most seeds. ``values`` comes from ``per_seed_values``."""
    out = agg.copy()
    quality = sorted(
        {s.column for specs in specs_for.values() for s in specs if s.higher_is_better is not None}
    )
    better = {s.column: s.higher_is_better for specs in specs_for.values() for s in specs}
    for column in quality:
        for stat in COMPARISON:
            out[f"{column} {stat}"] = (
                False if stat in ("reaches_full", "beats_full") else "" if stat == "verdict"
                else 0 if stat == "n_paired" else np.nan
            )  # fmt: skip
    if out.empty:
        return out
    keys = [*GROUP_KEYS, "cell"]
    is_full = (out["method"] == FULL) & out["user_method"].isin(["", FULL]) & (out["n"] > 0)
    for _, idx in out.groupby([*SECTION_KEYS, "model", "loss"], sort=False).groups.items():
        refs = [i for i in idx if is_full.at[i]]
        for i in idx:
            if is_full.at[i] or out.at[i, "n"] == 0:
                continue
            mine = values.get(tuple(out.loc[i, keys]), {})
            candidates = [r for r in refs if out.at[r, "ref_key"] == out.at[i, "ref_key"]]
            for column in quality:
                if f"{column} mean" not in out or pd.isna(out.at[i, f"{column} mean"]):
                    continue
                if not candidates:
                    out.at[i, f"{column} verdict"] = NO_REFERENCE
                    continue
                own = mine.get(column, {})
                ref_values = {
                    r: values.get(tuple(out.loc[r, keys]), {}).get(column, {}) for r in candidates
                }
                ref = max(
                    candidates, key=lambda r: (len(set(own) & set(ref_values[r])), out.at[r, "n"])
                )
                result = compare_paired(own, ref_values[ref], bool(better[column]), margin)
                out.at[i, f"{column} full"] = out.at[ref, f"{column} mean"]
                out.at[i, f"{column} n_paired"] = result.n_pairs
                out.at[i, f"{column} diff"] = result.diff
                out.at[i, f"{column} p_value"] = result.p_value
                out.at[i, f"{column} p_noninferior"] = result.p_noninferior
                out.at[i, f"{column} p_wilcoxon"] = result.p_wilcoxon
                out.at[i, f"{column} verdict"] = result.verdict
                out.at[i, f"{column} reaches_full"] = result.mark in (REACHES, BEATS)
                out.at[i, f"{column} beats_full"] = result.mark == BEATS
    return out


def unreachable_lines(agg: pd.DataFrame) -> list[str]:
    """One line per cell whose budget its method cannot reach, e.g. ``ml-100k / gmf /
    learned_quant / budget=0.05: not reachable (min 7.8 %), 3 runs``."""
    if agg.empty or BUDGET_FLOOR not in agg:
        return []
    return [
        f"{_where(rec)}: {unreachable_text(rec[BUDGET_FLOOR])}, {int(rec['n_unreachable'])} run(s)"
        for _, rec in agg.iterrows()
        if not pd.isna(rec[BUDGET_FLOOR])
    ]


def cell_warnings(agg: pd.DataFrame) -> list[str]:
    """One line per cell that pools runs of several code versions (or recorded and unrecorded)."""
    lines = []
    for _, rec in agg.iterrows():
        code = str(rec.get("code", ""))
        if ";" in code:
            lines.append(
                f"{_where(rec)}: the {rec['n']} runs pooled come from different code ({code}); "
                "rerun them on one commit or select one with --filter \"tags.git_commit = '...'\""
            )
    return lines


# ---------------------------------------------------------------------------------------------
# Paper tables


@dataclass
class Cell:
    """One formatted number: mean ± std [CI] and the mark (``beats``/``reaches``/"")."""

    mean: float
    std: float
    mark: str = ""
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    p_noninferior: float = math.nan
    n: int = 0
    n_paired: int = 0
    verdict: str = ""
    diff: float = math.nan
    p_wilcoxon: float = math.nan


@dataclass
class PaperTable:
    """One section's table, independent of the output format."""

    section: dict[str, str]
    models: list[str]
    specs: list[MetricSpec]
    rows: list[dict[str, str]]  # row keys + "label"
    cells: dict[tuple[int, str, str], Cell] = field(default_factory=dict)  # (row, model, label)
    counts: dict[tuple[int, str], tuple[int, str, int, int]] = field(default_factory=dict)
    settings: dict[tuple[int, str], str] = field(default_factory=dict)  # (row, model) -> settings
    margin: float = DEFAULT_MARGIN
    floors: dict[tuple[int, str], float] = field(default_factory=dict)  # not reachable: the floor

    @property
    def title(self) -> str:
        s = self.section
        return f"{s['dataset']} — {s['task_kind']}, {s['eval_protocol']} evaluation"


def row_label(method: str, user_method: str, setting: str, loss: str, variant: str = "") -> str:
    """``dpq (users=full, budget=0.25, loss=bpr, train.lr=0.01)``: the method and what sets its
    row apart."""
    extras = [f"users={user_method}"] if user_method and user_method != method else []
    extras += [setting] if setting else []
    extras += [f"loss={loss}"] if loss else []
    extras += [variant] if variant else []
    return method + (f" ({', '.join(extras)})" if extras else "")


def build_tables(agg: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> list[PaperTable]:
    """Aggregated rows (after ``compare_with_full``) -> one ``PaperTable`` per section.

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
        sizes = block.groupby(["method", "user_method", "setting", "_loss", "variant"])
        order = []
        for key, rows in sizes:
            size = rows[size_col].mean() if size_col in rows else np.nan
            if pd.isna(size):  # no finished run (e.g. not reachable): order by the budget asked
                size = requested_size(str(key[2]))
            method = key[0]
            order.append((method != FULL, method, -size if not pd.isna(size) else 0.0, key))
        order.sort(key=lambda t: t[:3] + (str(t[3]),))
        row_keys = [t[3] for t in order]
        table = PaperTable(
            section=section,
            models=sorted(block["model"].unique()),
            specs=specs,
            rows=[
                {
                    "method": m,
                    "user_method": u,
                    "setting": s,
                    "loss": lo,
                    "variant": v,
                    "label": row_label(m, u, s, lo, v),
                }
                for m, u, s, lo, v in row_keys
            ],  # fmt: skip
            margin=margin,
        )
        index = {key: i for i, key in enumerate(row_keys)}
        for _, rec in block.iterrows():
            i = index[
                (rec["method"], rec["user_method"], rec["setting"], rec["_loss"], rec["variant"])
            ]
            model = rec["model"]
            table.counts[(i, model)] = (
                int(rec["n"]), str(rec.get("unfinished", "") or ""), int(rec["n_failed"]),
                int(rec.get("n_unfinished", rec["n_failed"])),
            )  # fmt: skip
            if rec.get("settings"):
                table.settings[(i, model)] = str(rec["settings"])
            if not pd.isna(rec.get(BUDGET_FLOOR, math.nan)):
                table.floors[(i, model)] = float(rec[BUDGET_FLOOR])
            for spec in specs:
                mean = rec.get(f"{spec.column} mean", np.nan)
                if pd.isna(mean):
                    continue

                def scaled(stat: str, spec: MetricSpec = spec, rec: pd.Series = rec) -> float:
                    value = rec.get(f"{spec.column} {stat}", np.nan)
                    return float(value) * spec.scale if not pd.isna(value) else math.nan

                reaches = bool(rec.get(f"{spec.column} reaches_full", False))
                beats = bool(rec.get(f"{spec.column} beats_full", False))
                table.cells[(i, model, spec.label)] = Cell(
                    float(mean) * spec.scale, scaled("std"),
                    BEATS if beats else REACHES if reaches else "",
                    scaled("ci_low"), scaled("ci_high"),
                    float(rec.get(f"{spec.column} p_value", np.nan)),
                    float(rec.get(f"{spec.column} p_noninferior", np.nan)),
                    int(rec.get(f"{spec.column} n", rec["n"])),
                    int(rec.get(f"{spec.column} n_paired", 0) or 0),
                    str(rec.get(f"{spec.column} verdict", "") or ""),
                    float(rec.get(f"{spec.column} diff", np.nan)),
                    float(rec.get(f"{spec.column} p_wilcoxon", np.nan)),
                )  # fmt: skip
        tables.append(table)
    return tables


def format_cell(cell: Cell | None, spec: MetricSpec, tex: bool = False) -> str:
    """Markdown ``0.5120 ± 0.0100 [0.4871, 0.5369]*`` (4 decimals; sizes as % with fewer and no
    interval); LaTeX stays compact: ``$0.5120 \\pm 0.0100$\\dag``; ``–`` if absent."""
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
        if not tex and not math.isnan(cell.ci_low):
            text += f" [{cell.ci_low:.4f}, {cell.ci_high:.4f}]"
    if tex:
        return f"${text}$" + MARK_TEX.get(cell.mark, "")
    return text + MARK_MD.get(cell.mark, "")


def _size_text(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def _count_text(counts: tuple[int, str, int, int] | None) -> str:
    """``3``, or ``2 (+1 failed, 1 running)`` when runs of the cell did not finish."""
    if counts is None:
        return "–"
    n, unfinished, failed, total = counts
    if not total:
        return str(n)
    return f"{n} (+{unfinished or f'{failed} failed'})"


def marks_text(margin: float, tex: bool = False) -> str:
    """What the marks mean, for table footers and captions."""
    two, one = (r"\ddag", r"\dag") if tex else (f"`{MARK_MD[BEATS]}`", f"`{MARK_MD[REACHES]}`")
    pct = f"{100 * margin:g}" + (r"\%" if tex else " %")
    return (
        f"Against the full model of the same backbone and settings, paired over common seeds "
        f"(t-test, >= {MIN_PAIRS} pairs, else no mark): {two} = better, two-sided p < {ALPHA:g}; "
        f"{one} = not worse by more than {pct} of its mean (non-inferiority, one-sided p < {ALPHA:g}). "
        "No mark is not evidence of a difference; p-values are in table.csv."
    )


def to_markdown(tables: Sequence[PaperTable], notes: Sequence[str] = ()) -> str:
    """All sections as Markdown tables; header cells are ``<backbone> <metric>``; ``notes``
    (cells not pooled, mixed code versions) are listed at the end."""
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
                floor = t.floors.get((i, model))
                cells += [
                    unreachable_text(floor)
                    if floor is not None
                    else format_cell(t.cells.get((i, model, s.label)), s)
                    for s in t.specs
                ]
                cells.append(_count_text(t.counts.get((i, model))))
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "mean ± sample std [95 % CI of the mean, Student t] over n seeds (runs identical but for "
            "the seed); Size % = serving size / full float32 model at the reference d "
            "(eval.reference_dim, default 64). " + marks_text(t.margin),
        ]
        if t.floors:
            lines[-1] += (
                " `not reachable (min X %)`: every run of the cell failed because the method "
                "cannot reach its budget; X % of the full size is the smallest budget it reaches."
            )
        parts.append("\n".join(lines))
    text = "\n\n".join(parts) + "\n"
    if notes:
        text += "\nNotes:\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"
    return text


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---",
}  # fmt: skip


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(tables: Sequence[PaperTable]) -> str:
    """All sections as booktabs tables (needs ``\\usepackage{booktabs}``), a column group per
    backbone; cells are mean $\\pm$ std with the mark (intervals and p-values stay in the CSV)."""
    parts = []
    for t in tables:
        width = len(t.specs) + 1
        cols = "l" + (" " + "c" * width) * len(t.models)
        group = " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{tex_escape(m)}}}" for m in t.models)
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + j * width}-{1 + (j + 1) * width}}}" for j in range(len(t.models))
        )
        names = [tex_escape(s.label) for s in t.specs] + ["$n$"]
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{tex_escape(t.title)}: mean $\pm$ sample std over $n$ seeds. "
            + marks_text(t.margin, tex=True).replace(">=", r"$\geq$").replace(" < ", " $<$ ")
            + "}",
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
                floor = t.floors.get((i, model))
                cells += [
                    tex_escape(unreachable_text(floor))
                    if floor is not None
                    else format_cell(t.cells.get((i, model, s.label)), s, tex=True)
                    for s in t.specs
                ]
                counts = t.counts.get((i, model))
                cells.append(str(counts[0]) if counts else "--")
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv_frame(tables: Sequence[PaperTable]) -> pd.DataFrame:
    """The paper tables as one wide numeric frame: a row per (section, method row); per backbone
    ``<backbone> <metric> n|mean|std|ci_low|ci_high`` and, for quality metrics,
    ``n_paired|p_value|diff|p_noninferior|p_wilcoxon|verdict|reaches_full|beats_full`` (``diff``:
    mean per-seed difference to the full model over the paired seeds); ``<backbone> n|failed|
    unfinished`` and ``<backbone> settings`` (full precision); ``<backbone> budget_floor`` and
    ``<backbone> note`` (``not reachable (min X %)``) for a cell whose budget the method cannot
    reach."""
    records = []
    for t in tables:
        for i, row in enumerate(t.rows):
            rec: dict[str, object] = {
                **t.section,
                **{k: row[k] for k in ROW_KEYS},
                "label": row["label"],
            }
            for model in t.models:
                for s in t.specs:
                    cell = t.cells.get((i, model, s.label))
                    rec[f"{model} {s.label} n"] = cell.n if cell else 0
                    rec[f"{model} {s.label} mean"] = cell.mean if cell else np.nan
                    rec[f"{model} {s.label} std"] = cell.std if cell else np.nan
                    rec[f"{model} {s.label} ci_low"] = cell.ci_low if cell else np.nan
                    rec[f"{model} {s.label} ci_high"] = cell.ci_high if cell else np.nan
                    if s.higher_is_better is not None:
                        rec[f"{model} {s.label} n_paired"] = cell.n_paired if cell else 0
                        rec[f"{model} {s.label} p_value"] = cell.p_value if cell else np.nan
                        rec[f"{model} {s.label} diff"] = cell.diff if cell else np.nan
                        rec[f"{model} {s.label} p_noninferior"] = (
                            cell.p_noninferior if cell else np.nan
                        )
                        rec[f"{model} {s.label} p_wilcoxon"] = cell.p_wilcoxon if cell else np.nan
                        rec[f"{model} {s.label} verdict"] = cell.verdict if cell else ""
                        rec[f"{model} {s.label} reaches_full"] = bool(
                            cell and cell.mark in (REACHES, BEATS)
                        )
                        rec[f"{model} {s.label} beats_full"] = bool(cell and cell.mark == BEATS)
                n, _, failed, total = t.counts.get((i, model), (0, "", 0, 0))
                rec[f"{model} n"] = n
                rec[f"{model} failed"] = failed
                rec[f"{model} unfinished"] = total
                rec[f"{model} settings"] = t.settings.get((i, model), "")
                floor = t.floors.get((i, model))
                rec[f"{model} budget_floor"] = np.nan if floor is None else floor
                rec[f"{model} note"] = "" if floor is None else unreachable_text(floor)
            records.append(rec)
    frame = pd.DataFrame(records)
    for column in frame.columns:  # counts stay integers where a section lacks the backbone
        if column.endswith((" n", " failed", " unfinished", " n_paired")):
            frame[column] = frame[column].astype("Int64")
    return frame


@dataclass
class Report:
    """Everything the CLI writes, computed from the loaded runs."""

    runs: pd.DataFrame  # labelled, all statuses (SKIPPED pointers to loaded runs removed)
    finished: pd.DataFrame  # labelled, de-duplicated, one row per run, with its cell
    unfinished: pd.DataFrame
    duplicates: int
    aggregated: pd.DataFrame
    tables: list[PaperTable]
    members: pd.DataFrame = field(default_factory=pd.DataFrame)  # finished runs per cell
    notes: list[str] = field(default_factory=list)  # cells not pooled, unrecorded configs
    warnings: list[str] = field(default_factory=list)  # cells that mix code versions
    skipped: int = 0  # SKIPPED run folders that point at a loaded run (not counted again)
    skipped_stood_in: int = 0  # SKIPPED folders standing in for a run that was not loaded
    margin: float = DEFAULT_MARGIN
    unreachable: pd.DataFrame = field(default_factory=pd.DataFrame)  # FAILED: budget below floor


def make_report(
    runs: pd.DataFrame, margin: float = DEFAULT_MARGIN, reference_free: Sequence[str] = ()
) -> Report:
    """Loaded runs -> labelled, skips resolved, de-duplicated, split into cells, aggregated,
    compared with the full model, tabulated. ``reference_free``: config keys (or prefixes) a
    compressed cell may differ in from its full reference (``cells.reference_key``)."""
    labelled = add_labels(runs)
    labelled, skipped, stood = resolve_skipped(labelled)
    finished, unfinished = split_status(labelled)
    finished, duplicates = drop_duplicates(finished)
    members, notes = assign_cells(pd.concat([finished, unfinished]), LABEL_KEYS)
    if reference_free and not members.empty:
        members["ref_key"] = [
            reference_key(parse_config(c), reference_free) if parse_config(c) is not None else k
            for c, k in zip(
                members.get("config", pd.Series("", index=members.index)), members["ref_key"]
            )
        ]
        notes.append(
            "each compressed cell is compared with the full model at the same settings except "
            f"{', '.join(reference_free)} (--reference-free: methods tuned on their own)"
        )
    done = members["status"] == "FINISHED" if not members.empty else pd.Series(dtype=bool)
    fin_members, seed_dups = drop_seed_duplicates(members[done])
    unreached = unreachable_mask(members)
    unreach_members = members[unreached]
    unf_members = members[~done & ~unreached]
    if not unreach_members.empty:  # not failures: out of failed.csv and "not finished"
        gone = set(unreach_members["run_id"]) - set(unf_members["run_id"])
        unfinished = unfinished[~unfinished["run_id"].isin(gone)]
    unknown = int((fin_members["cell"] == "").sum()) if not fin_members.empty else 0
    if unknown:
        notes.append(
            f"{unknown} finished run(s) recorded no config (no params, config.yaml or cell_hash): "
            "pooled by their labels only"
        )
    kinds = sorted(set(labelled["task_kind"])) or ["ranking"]
    specs_for = {kind: metric_specs(kind, list(labelled.columns)) for kind in kinds}
    metrics = summary_metrics(labelled.columns)
    agg = aggregate(fin_members, unf_members, metrics, unreach_members)
    agg = compare_with_full(agg, per_seed_values(fin_members, metrics), specs_for, margin)
    unique = fin_members.drop_duplicates("run_id") if not fin_members.empty else fin_members
    return Report(
        labelled, unique, unfinished, duplicates + seed_dups, agg, build_tables(agg, margin),
        fin_members, notes, cell_warnings(agg), skipped, stood, margin,
        unreachable=unreach_members.drop_duplicates("run_id"),
    )  # fmt: skip


def failed_frame(unfinished: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not finish, with what is needed to find and re-run them."""
    columns = ["run_id", "status", "dataset", "model", "method", "user_method", "setting", "seed",
               "loss", "eval_protocol", "error", "run_dir", "store_experiment"]  # fmt: skip
    out = unfinished.reindex(columns=columns)
    return out.sort_values(["dataset", "model", "method", "seed"], kind="stable").reset_index(
        drop=True
    )
