"""``python -m recbench.report``: recorded runs -> tables, plots and an MLflow report run.

Why a command and not a notebook: the same report has to be rebuilt after every sweep, by anyone,
with the same aggregation; a command that writes plain files (Markdown, LaTeX, CSV, PNG) under
``outputs/reports/<name>/`` and logs them to MLflow makes the numbers in a paper traceable to runs.
User mistakes (no store, no matching runs, a bad filter) end with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from recbench import record
from recbench.report.load import REPORT_EXPERIMENT, FolderSource, MlflowSource, ReportError
from recbench.report.stats import DEFAULT_MARGIN
from recbench.report.tables import (
    SECTION_KEYS,
    Report,
    failed_frame,
    make_report,
    metric_specs,
    to_csv_frame,
    to_latex,
    to_markdown,
    unreachable_lines,
)

DEFAULT_URI = "sqlite:///outputs/mlflow.db"
CONF = Path(__file__).resolve().parents[2] / "conf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbench.report",
        description=(
            "Aggregate recorded recbench runs over seeds into paper-style tables (Markdown, LaTeX, "
            "CSV) and plots, written to OUT/NAME/ and logged to the MLflow experiment "
            f"'{REPORT_EXPERIMENT}'."
        ),
        epilog=(
            "examples:\n"
            "  python -m recbench.report                                  # every experiment\n"
            "  python -m recbench.report --experiment ml-100k --name ml100k\n"
            "  python -m recbench.report --filter \"tags.model = 'gmf'\" --no-plots\n"
            "  python -m recbench.report --runs-dir outputs/multirun/2026-01-01/12-00-00 --no-mlflow\n"
            "  python -m recbench.report --experiment ml-1m --popularity ml-1m"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--uri", default=None, help=f"MLflow tracking URI to read (default {DEFAULT_URI})"
    )
    parser.add_argument(
        "--experiment",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="MLflow experiment(s) to read (default: all but the reports'); with "
        "--runs-dir, the runs' `experiment` (preset) tag",
    )
    parser.add_argument(
        "--filter",
        default="",
        metavar="EXPR",
        help="MLflow search filter, e.g. \"tags.model = 'gmf'\"",
    )
    parser.add_argument(
        "--include-tuning",
        action="store_true",
        help="keep tuning trials (tag stage=tune, no test metrics); left out by default",
    )
    parser.add_argument(
        "--runs-dir",
        default=None,
        metavar="DIR",
        help="read run folders (metrics.json) under DIR instead of MLflow",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="report name: the folder under --out and the MLflow run "
        "report-NAME (default: the experiments' names, or 'all')",
    )
    parser.add_argument(
        "--out",
        default="outputs/reports",
        metavar="DIR",
        help="where report folders go (default outputs/reports)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        metavar="FRACTION",
        help="non-inferiority margin of the `*` mark ('reaches full'), as a "
        f"fraction of the full model's mean (default {DEFAULT_MARGIN:g})",
    )
    parser.add_argument(
        "--reference-free",
        default="",
        metavar="KEY,...",
        help="config keys or prefixes a compressed cell may differ in from the full "
        "model it is compared with, for methods tuned on their own, e.g. "
        "--reference-free train (default: none; identical settings)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write tables only")
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help=f"do not log the report to the MLflow experiment '{REPORT_EXPERIMENT}'",
    )
    parser.add_argument(
        "--popularity",
        default=None,
        metavar="DATASET",
        help="also plot the item popularity of a dataset config (conf/dataset/)",
    )
    parser.add_argument(
        "--code-categories",
        default=None,
        metavar="A,B,...",
        help="categories of the code-similarity heatmaps (default: the 15 most "
        "frequent), e.g. the MGQE paper's Sci-Fi,Romance,Animation,Horror",
    )
    parser.add_argument(
        "--popularity-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for --popularity, e.g. dataset.root=/data",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 <= args.margin < 1:
            raise ReportError(
                f"--margin {args.margin:g} is not a fraction in [0, 1); pass e.g. --margin 0.01 "
                "(1 % of the full model's mean)"
            )
        return run(args)
    except ReportError as exc:
        print(f"recbench report: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def run(args: argparse.Namespace) -> int:
    uri = args.uri or DEFAULT_URI
    source = FolderSource(args.runs_dir) if args.runs_dir else MlflowSource(uri)
    runs = source.runs(args.experiment, args.filter)
    if not args.include_tuning and not runs.empty:
        runs = runs[runs["stage"] != "tune"]  # tuning trials have validation metrics only
    if runs.empty:
        where = f"experiment(s) {', '.join(args.experiment)} of " if args.experiment else ""
        what = f" with --filter {args.filter!r}" if args.filter else ""
        raise ReportError(
            f"no runs match in {where}{source.describe()}{what}; check --experiment/--filter "
            "(or --uri/--runs-dir), or record runs with `python -m recbench.run`"
        )
    name = report_name(args)
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)

    free = [k.strip() for k in args.reference_free.split(",") if k.strip()]
    report = make_report(runs, args.margin, free)
    written = write_tables(report, out)
    notes: list[str] = []
    if not args.no_plots:
        written += write_plots(report, source, out / "plots", notes, args.code_categories)
    if args.popularity:
        written += write_popularity(args.popularity, args.popularity_override, out / "plots", notes)

    # Run folders mean MLflow is off: log there only when a store was named explicitly.
    log_to_mlflow = not args.no_mlflow and (not args.runs_dir or args.uri is not None)
    logged = ""
    if log_to_mlflow:
        try:
            logged = log_report(uri, name, out, args, report)
        except ReportError as exc:
            notes.append(f"not logged to MLflow: {exc}")
    print_summary(report, source.describe(), out, written, logged, notes)
    return 0


def report_name(args: argparse.Namespace) -> str:
    """``--name``, else the experiments joined, else the runs folder's name, else ``all``."""
    if args.name:
        raw = args.name
    elif args.experiment:
        raw = "-".join(args.experiment)
    elif args.runs_dir:
        raw = Path(args.runs_dir).resolve().name
    else:
        raw = "all"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("_") or "report"


def write_tables(report: Report, out: Path) -> list[Path]:
    """table.md/.tex/.csv (paper layout), aggregate.csv (one row per group, every summary
    metric), runs.csv (the runs that went in) and failed.csv (those that did not finish)."""
    files = {
        "table.md": to_markdown(report.tables, [*report.warnings, *report.notes]),
        "table.tex": to_latex(report.tables),
    }
    paths = []
    for filename, text in files.items():
        (out / filename).write_text(text)
        paths.append(out / filename)
    frames = {
        "table.csv": to_csv_frame(report.tables),
        "aggregate.csv": report.aggregated,
        "runs.csv": report.runs,
        "failed.csv": failed_frame(report.unfinished),
    }
    for filename, frame in frames.items():
        frame.to_csv(out / filename, index=False)
        paths.append(out / filename)
    return paths


def write_plots(report: Report, source: FolderSource | MlflowSource, out: Path,
                notes: list[str], code_categories: str | None = None) -> list[Path]:  # fmt: skip
    """Quality-vs-size and training-loss figures per section x backbone, and code-similarity
    heatmaps of quantised item layers. A figure that cannot be drawn is noted and skipped: plots
    must never cost the tables."""
    from recbench.report.plots import plot_quality_vs_size, plot_training_loss, slug

    paths: list[Path] = []
    agg = report.aggregated
    if agg.empty:
        return paths
    try:
        history = source.history(report.finished["run_id"], record.TRAIN_LOSS)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"training-loss history unavailable ({type(exc).__name__}: {exc})")
        history = pd.DataFrame(columns=["run_id", "epoch", "value"])
    for keys, block in agg.groupby([*SECTION_KEYS, "model"], sort=True):
        dataset, protocol, kind, model = map(str, keys)
        title = f"{dataset} / {model} ({kind}, {protocol})"
        if not (block["n"] > 0).any():  # only RUNNING/FAILED runs: nothing to draw
            notes.append(f"no plot for {title}: none of its runs finished")
            continue
        specs = metric_specs(kind, [c.removesuffix(" mean") for c in agg.columns])
        base = slug(dataset, model, protocol if protocol != "full" else "")
        try:
            paths.append(
                plot_quality_vs_size(block, specs, out / f"quality_vs_size__{base}.png", title)
            )
            runs = report.finished
            mask = (
                (runs["dataset"] == dataset) & (runs["eval_protocol"] == protocol)
                & (runs["task_kind"] == kind) & (runs["model"] == model)
            )  # fmt: skip
            mine = history[history["run_id"].isin(runs.loc[mask, "run_id"])]
            if not mine.empty:
                paths.append(
                    plot_training_loss(mine, runs[mask], out / f"train_loss__{base}.png", title)
                )
        except Exception as exc:  # noqa: BLE001
            notes.append(f"plot for {title} skipped ({type(exc).__name__}: {exc})")
    paths += write_code_similarity(report, source, out, notes, code_categories)
    return paths


def write_code_similarity(report: Report, source: FolderSource | MlflowSource, out: Path,
                          notes: list[str], categories: str | None = None) -> list[Path]:  # fmt: skip
    """Figure 8 for every quantised group whose dataset has categories (recbench.report.codes)."""
    from recbench.report.codes import code_similarity_plots, folder_resolver

    resolve, cleanup = folder_resolver(source)
    try:
        labels = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
        return code_similarity_plots(report.finished, resolve, out, notes, labels)
    finally:
        cleanup()


def item_counts(dataset: str, overrides: Sequence[str] = ()) -> tuple:
    """Events per item of a dataset config, loaded exactly as a run would (Hydra compose of conf/
    with ``dataset=<name>``, then the config's loader)."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    import recbench.config  # noqa: F401 - registers the schema the defaults list names

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={dataset}", *overrides])
    inter = instantiate(cfg.dataset.loader)
    _, counts = np.unique(np.asarray(inter.item), return_counts=True)
    return counts, str(cfg.dataset.name)


def write_popularity(
    dataset: str, overrides: Sequence[str], out: Path, notes: list[str]
) -> list[Path]:
    """The Figure-4 plot for one dataset; a dataset that cannot be loaded is a note, not an error."""
    from recbench.report.plots import plot_item_popularity, slug

    try:
        counts, name = item_counts(dataset, overrides)
        path = out / f"popularity__{slug(name)}.png"
        title = f"{name}: {len(counts):,} items, {int(counts.sum()):,} events"
        return [plot_item_popularity(counts, path, title)]
    except Exception as exc:  # noqa: BLE001 - missing files, bad overrides, unknown dataset
        message = " ".join(str(exc).split())[:300]
        notes.append(f"popularity plot for {dataset!r} skipped ({type(exc).__name__}: {message})")
        return []


def log_report(uri: str, name: str, out: Path, args: argparse.Namespace, report: Report) -> str:
    """Log every file of the report as artifacts of a run ``report-<name>`` in the experiment
    ``recbench-reports``, so a table in a paper points at one MLflow run. Returns the run id."""
    from recbench.report.load import quiet_mlflow
    from recbench.tracking import _absolute_sqlite_uri, _retry

    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = _absolute_sqlite_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(REPORT_EXPERIMENT)
        if found is None:
            location = None
            if uri.startswith("sqlite:///"):  # next to the runs' artifacts (outputs/mlartifacts)
                db = Path(uri.removeprefix("sqlite:///"))
                location = (db.parent / "mlartifacts" / REPORT_EXPERIMENT).as_uri()
            experiment_id = client.create_experiment(REPORT_EXPERIMENT, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        tags = {
            "report.name": name,
            "report.source": args.runs_dir or uri,
            "report.experiments": ",".join(args.experiment),
            "report.filter": args.filter or "",
            "report.runs": str(len(report.runs)),
            "report.finished": str(len(report.finished)),
            "report.failed": str(len(report.unfinished)),
            "report.unreachable": str(len(report.unreachable)),
        }
        run = _retry(lambda: client.create_run(experiment_id, run_name=f"report-{name}", tags=tags))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _retry(lambda: client.log_artifacts(run.info.run_id, str(out)))
        _retry(lambda: client.set_terminated(run.info.run_id, "FINISHED"))
        return run.info.run_id
    except Exception as exc:  # noqa: BLE001
        raise ReportError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def print_summary(report: Report, source: str, out: Path, written: Sequence[Path], logged: str,
                  notes: Sequence[str]) -> None:  # fmt: skip
    """What went in (per state), the tables, what did not finish, the cells whose budget the
    method cannot reach, cells not pooled, code-version warnings, where everything went."""
    n_fail = len(report.unfinished)
    unreachable = unreachable_lines(report.aggregated)
    statuses = report.unfinished["status"].value_counts().to_dict() if n_fail else {}
    status_text = ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
    stood = (
        f" (of which {report.skipped_stood_in} SKIPPED run folder(s) stand in for the finished run "
        "they duplicate, which is not loaded here)"
        if report.skipped_stood_in
        else ""
    )
    lines = [
        f"recbench report: {len(report.runs) + report.skipped} runs from {source}: "
        f"{len(report.finished)} finished"
        + stood
        + (f" ({report.duplicates} duplicate re-runs dropped)" if report.duplicates else "")
        + (f", {n_fail} not finished ({status_text})" if n_fail else "")
        + (
            f", {len(report.unreachable)} FAILED for a budget below the method's floor "
            f"(not reachable, {len(unreachable)} cell(s))"
            if unreachable
            else ""
        )
        + (
            f", {report.skipped} SKIPPED (same as a run above, not counted again)"
            if report.skipped
            else ""
        ),
        "",
        to_markdown(report.tables).rstrip(),
    ]
    if n_fail:
        lines += ["", f"not finished ({n_fail}, listed in {out / 'failed.csv'}):"]
        failed = failed_frame(report.unfinished)
        for _, rec in failed.head(10).iterrows():
            lines.append(
                f"  {rec['status']:<8} {rec['dataset']} / {rec['model']} / {rec['method']} "
                f"/ seed {rec['seed']}: {str(rec['error'] or '')[:120]}"
            )
        if n_fail > 10:
            lines.append(f"  ... and {n_fail - 10} more")
    if unreachable:
        lines += [
            "",
            "not reachable (the method cannot reach the budget; not counted as failures):",
        ]
        lines += [f"  {line}" for line in unreachable]
    if report.notes:
        lines += ["", "notes (cells not pooled: separate rows; how cells were compared):"]
        lines += [f"  {n}" for n in report.notes]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += ["", f"wrote {len(written)} files to {out}/"]
    if logged:
        lines.append(
            f"logged to MLflow experiment '{REPORT_EXPERIMENT}', run report-{out.name} ({logged})"
        )
    lines += [f"note: {n}" for n in notes]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
