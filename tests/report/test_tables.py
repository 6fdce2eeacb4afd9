"""Aggregation, cells, marking and formatting as pure functions on hand-made frames, checked
against hand-computed numbers; the figure functions on toy data."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbench.report.load import (
    ReportError,
    eval_protocol_of,
    knobs_of,
    parse_simple_filter,
    to_frame,
)
from recbench.report.plots import code_similarity_matrix, plot_code_similarity, plot_item_popularity
from recbench.report.stats import compare_paired, summarize
from recbench.report.tables import (
    Cell,
    MetricSpec,
    add_labels,
    aggregate,
    build_tables,
    drop_duplicates,
    format_cell,
    make_report,
    metric_specs,
    split_status,
    tex_escape,
    to_csv_frame,
    to_latex,
    to_markdown,
)

PNG = b"\x89PNG\r\n\x1a\n"


def run(model: str, method: str, seed: int, status: str = "FINISHED", task: str = "ranking",
        knobs: dict | None = None, loss: str = "bce", cfg: dict | None = None,
        **metrics: float) -> dict:  # fmt: skip
    """A loaded run as the loaders return it; ``cfg`` is its recorded config (None: unknown)."""
    return {
        "run_id": f"{model}-{method}-{seed}-{status}-{json.dumps(knobs)}-{loss}-{json.dumps(cfg)}",
        "status": status, "dataset": "d", "model": model, "method": method, "user_method": "",
        "task": task, "seed": str(seed), "loss": loss, "config_hash": "", "eval_protocol": "full",
        "budget": "", "knobs": json.dumps(knobs or {}), "start_time": pd.Timestamp(seed, unit="s"),
        "config": json.dumps(cfg, sort_keys=True) if cfg is not None else "",
        **{k.replace("__", "/"): v for k, v in metrics.items()},
    }  # fmt: skip


def frame(rows: list[dict]) -> pd.DataFrame:
    return to_frame(rows)


def test_aggregate_mean_sample_std_and_counts() -> None:
    rows = [
        run("gmf", "full", 0, test__hr_at_10=0.1, size__fraction_of_full=1.0),
        run("gmf", "full", 1, test__hr_at_10=0.2, size__fraction_of_full=1.0),
        run("gmf", "full", 2, test__hr_at_10=0.6, size__fraction_of_full=1.0),
        run("gmf", "dpq", 0, test__hr_at_10=0.3, size__fraction_of_full=0.1),
        run("gmf", "dpq", 1, status="FAILED"),
        run("gmf", "mgqe", 0, status="KILLED"),
    ]
    labelled = add_labels(frame(rows))
    finished, unfinished = split_status(labelled)
    agg = aggregate(finished, unfinished, ["test/hr_at_10", "size/fraction_of_full"])
    agg = agg.set_index("method")
    # mean(.1,.2,.6) = .3; sample var = (.04 + .01 + .09) / 2 = .07
    assert agg.loc["full", "test/hr_at_10 mean"] == pytest.approx(0.3)
    assert agg.loc["full", "test/hr_at_10 std"] == pytest.approx(0.07**0.5)
    assert (agg.loc["full", "n"], agg.loc["full", "n_failed"]) == (3, 0)
    # 95 % interval: t(0.975, 2) = 4.302653 (tables; also .95 sqrt(2 / (1 - .95^2)))
    half = 4.302652729911275 * 0.07**0.5 / 3**0.5
    assert agg.loc["full", "test/hr_at_10 ci_low"] == pytest.approx(0.3 - half)
    assert agg.loc["full", "test/hr_at_10 ci_high"] == pytest.approx(0.3 + half)
    assert agg.loc["full", "test/hr_at_10 n"] == 3
    assert agg.loc["dpq", "test/hr_at_10 mean"] == pytest.approx(0.3)
    assert np.isnan(agg.loc["dpq", "test/hr_at_10 std"])  # one seed: no spread, no interval
    assert np.isnan(agg.loc["dpq", "test/hr_at_10 ci_low"])
    assert (agg.loc["dpq", "n"], agg.loc["dpq", "n_failed"]) == (1, 1)
    assert (agg.loc["mgqe", "n"], agg.loc["mgqe", "n_unfinished"]) == (0, 1)  # only failures: a row
    assert agg.loc["mgqe", "n_failed"] == 0 and agg.loc["mgqe", "unfinished"] == "1 killed"
    assert np.isnan(agg.loc["mgqe", "test/hr_at_10 mean"])


def test_marks_need_three_paired_seeds_and_a_test() -> None:
    """The old rule (mean >= full's mean) marked every one of these; the paired test marks only the
    cell whose advantage is consistent over >= 3 common seeds, in the right direction per metric."""
    rows = [
        run("mf", "full", 0, task="rating", loss="mse", test__rmse=0.9, test__mae=0.7),
        run("mf", "full", 1, task="rating", loss="mse", test__rmse=1.0, test__mae=0.8),
        run("mf", "dpq", 0, task="rating", loss="mse", test__rmse=0.5, test__mae=0.5),
        run("mf", "dpq", 1, task="rating", loss="mse", test__rmse=0.5, test__mae=0.5),  # 2 seeds
        *[run("gmf", "full", s, test__hr_at_10=h, test__ndcg_at_10=0.20) for s, h in enumerate([.30, .40, .50, .60])],
        # HR: gains .10, .11, .09 on seeds 0-2 (consistent); NDCG: +.1, -.09, +.1 (noisy, mean better)
        *[run("gmf", "dpq", s, test__hr_at_10=h, test__ndcg_at_10=n)
          for s, h, n in [(0, .40, .30), (1, .51, .11), (2, .59, .30)]],
        # seeds 5-7 have no full twin: no pairs, no mark, however good
        *[run("gmf", "qr", s, test__hr_at_10=0.9, test__ndcg_at_10=0.9) for s in (5, 6, 7)],
    ]  # fmt: skip
    report = make_report(frame(rows))
    agg = report.aggregated.set_index(["model", "method"])
    for metric in ("test/rmse", "test/mae"):  # far better, but only two seeds
        assert agg.loc[("mf", "dpq"), f"{metric} verdict"] == "too few pairs"
        assert not agg.loc[("mf", "dpq"), f"{metric} reaches_full"]
        assert agg.loc[("mf", "dpq"), f"{metric} n_paired"] == 2
    assert agg.loc[("gmf", "dpq"), "test/hr_at_10 verdict"] == "beats"
    assert agg.loc[("gmf", "dpq"), "test/hr_at_10 beats_full"]
    assert agg.loc[("gmf", "dpq"), "test/hr_at_10 n_paired"] == 3
    assert agg.loc[("gmf", "dpq"), "test/hr_at_10 full"] == pytest.approx(0.45)  # all 4 seeds
    assert agg.loc[("gmf", "dpq"), "test/hr_at_10 diff"] == pytest.approx(0.10)
    ndcg = agg.loc[("gmf", "dpq")]
    assert ndcg["test/ndcg_at_10 mean"] > 0.2 and ndcg["test/ndcg_at_10 verdict"] == "inconclusive"
    assert not ndcg["test/ndcg_at_10 reaches_full"]
    assert agg.loc[("gmf", "qr"), "test/hr_at_10 verdict"] == "too few pairs"
    assert agg.loc[("gmf", "qr"), "test/hr_at_10 n_paired"] == 0
    assert agg.loc[("gmf", "full"), "test/hr_at_10 verdict"] == ""  # the reference itself
    kinds = [t.section["task_kind"] for t in report.tables]
    assert kinds == ["ranking", "rating"]
    assert [s.label for s in report.tables[1].specs] == ["RMSE", "MAE", "Size %"]
    md = to_markdown(report.tables)
    assert "| dpq | 0.5000 ± 0.0954 [0.2630, 0.7370]** | 0.2367 ± 0.1097 [" in md
    assert "| qr | 0.9000 ± 0.0000 [0.9000, 0.9000] | 0.9000" in md  # no mark


def t2_sf(t: float) -> float:
    """P(T > t) for Student's t with 2 degrees of freedom (closed form, no scipy)."""
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


def test_paired_p_values_match_the_formula() -> None:
    """compare_paired against the explicit t statistic and the closed-form t(2) tail; Wilcoxon
    against the exact signed-rank distribution (3 pairs: 2^3 equally likely sign patterns)."""
    full = {"0": 0.50, "1": 0.52, "2": 0.54, "9": 0.1}
    cand = {"0": 0.505, "1": 0.53, "2": 0.56, "7": 0.9}  # gains .005, .01, .02 on seeds 0-2
    gains = np.array([0.005, 0.01, 0.02])
    se = gains.std(ddof=1) / math.sqrt(3)
    result = compare_paired(cand, full, higher_is_better=True, margin=0.01)
    assert result.n_pairs == 3 and result.diff == pytest.approx(gains.mean())
    assert result.p_value == pytest.approx(2 * t2_sf(gains.mean() / se))
    assert result.p_noninferior == pytest.approx(t2_sf((gains.mean() + 0.01 * 0.52) / se))
    assert result.p_wilcoxon == pytest.approx(2 / 8)  # all positive: 1 of 8 patterns, two-sided
    assert result.verdict == "reaches"  # p = .12 (not "beats"), non-inferior p = .031
    # lower is better: the same numbers as RMSE are significantly-looking worse, never marked
    worse = compare_paired(cand, full, higher_is_better=False, margin=0.01)
    assert worse.p_value == pytest.approx(result.p_value) and worse.mark == ""
    assert worse.p_noninferior == pytest.approx(t2_sf((-gains.mean() + 0.0052) / se))
    # margin 0: non-inferiority is the one-sided test of "better"
    strict = compare_paired(cand, full, True, margin=0.0)
    assert strict.p_noninferior == pytest.approx(result.p_value / 2)
    summary = summarize([0.1, 0.2, 0.6])
    half = 0.95 * math.sqrt(2 / (1 - 0.95**2)) * math.sqrt(0.07) / math.sqrt(3)
    assert (summary.n, summary.mean, summary.std) == (
        3,
        pytest.approx(0.3),
        pytest.approx(0.07**0.5),
    )
    assert (summary.ci_low, summary.ci_high) == (
        pytest.approx(0.3 - half),
        pytest.approx(0.3 + half),
    )
    assert summarize([0.5]).n == 1 and math.isnan(summarize([0.5]).ci_low)


def test_no_full_reference_means_no_marks() -> None:
    report = make_report(frame([run("gmf", "dpq", 0, test__hr_at_10=0.9)]))
    assert not report.aggregated["test/hr_at_10 reaches_full"].any()
    assert "*" not in to_markdown(report.tables).split("\n\n")[0].splitlines()[-1]


def test_setting_labels_from_budget_or_varying_knobs() -> None:
    rows = [
        run("gmf", "dpq", 0, knobs={"bits": "4", "init_std": "0.01"}, test__hr_at_10=0.1),
        run("gmf", "dpq", 1, knobs={"bits": "8", "init_std": "0.01"}, test__hr_at_10=0.2),
        run("gmf", "full", 0, knobs={"init_std": "0.01"}, test__hr_at_10=0.3),
        {**run("gmf", "mgqe", 0, test__hr_at_10=0.4), "budget": "0.250"},
    ]
    labelled = add_labels(frame(rows)).set_index("run_id")
    assert sorted(labelled["setting"]) == ["", "bits=4", "bits=8", "budget=0.25"]
    report = make_report(frame(rows))
    labels = [r["label"] for r in report.tables[0].rows]
    assert labels[0] == "full"  # full first, then methods by name
    assert labels[1:] == ["dpq (bits=4)", "dpq (bits=8)", "mgqe (budget=0.25)"]


def test_loss_enters_label_only_when_a_backbone_has_several() -> None:
    rows = [
        run("gmf", "full", 0, loss="bce", test__hr_at_10=0.3),
        run("gmf", "full", 1, loss="bpr", test__hr_at_10=0.5),
        run("gmf", "dpq", 0, loss="bpr", test__hr_at_10=0.4),
    ]
    report = make_report(frame(rows))
    labels = [r["label"] for r in report.tables[0].rows]
    assert labels == ["full (loss=bce)", "full (loss=bpr)", "dpq (loss=bpr)"]
    agg = report.aggregated.set_index(["method", "loss"])
    assert agg.loc[("dpq", "bpr"), "test/hr_at_10 full"] == pytest.approx(0.5)  # same-loss full
    assert not agg.loc[("dpq", "bpr"), "test/hr_at_10 reaches_full"]


def test_drop_duplicates_keeps_latest_per_config_hash() -> None:
    rows = [
        {
            **run("gmf", "full", 0, test__hr_at_10=0.1),
            "config_hash": "a",
            "run_id": "old",
            "start_time": pd.Timestamp(1, unit="s"),
        },
        {
            **run("gmf", "full", 0, test__hr_at_10=0.2),
            "config_hash": "a",
            "run_id": "new",
            "start_time": pd.Timestamp(2, unit="s"),
        },
        {**run("gmf", "full", 1, test__hr_at_10=0.3), "config_hash": "b", "run_id": "other"},
    ]
    kept, dropped = drop_duplicates(frame(rows))
    assert dropped == 1 and sorted(kept["run_id"]) == ["new", "other"]


def test_metric_specs_pick_k() -> None:
    assert [s.label for s in metric_specs("ranking", ["test/hr_at_10", "test/hr_at_5"])][:2] == [
        "HR@10", "NDCG@10"]  # fmt: skip
    assert metric_specs("ranking", ["test/hr_at_20", "test/hr_at_5"])[0].column == "test/hr_at_5"


def test_formatting() -> None:
    hr = MetricSpec("HR@10", "test/hr_at_10", True)
    size = MetricSpec("Size %", "size/fraction_of_full", None, 100.0)
    assert format_cell(Cell(0.51234, 0.01, "reaches"), hr) == "0.5123 ± 0.0100*"
    assert (
        format_cell(Cell(0.5, 0.01, "beats", 0.49, 0.51), hr)
        == "0.5000 ± 0.0100 [0.4900, 0.5100]**"
    )
    assert format_cell(Cell(0.5, float("nan")), hr) == "0.5000"
    assert (
        format_cell(Cell(0.5, 0.02, "reaches", 0.4, 0.6), hr, tex=True)
        == r"$0.5000 \pm 0.0200$\dag"
    )
    assert format_cell(Cell(0.5, 0.02, "beats"), hr, tex=True) == r"$0.5000 \pm 0.0200$\ddag"
    assert format_cell(Cell(3.125, 0.0), size) == "3.1"
    assert format_cell(Cell(0.0123, 0.0), size) == "0.012"
    assert format_cell(None, hr) == "–" and format_cell(None, hr, tex=True) == "--"
    assert tex_escape("dot_bias 50% & #1") == r"dot\_bias 50\% \& \#1"


def test_renderers_agree_on_a_small_table() -> None:
    rows = [
        run("gmf", "full", s, test__hr_at_10=h, test__ndcg_at_10=h / 2, size__fraction_of_full=1.0)
        for s, h in enumerate([0.4, 0.6, 0.5])
    ] + [
        run("gmf", "dpq", s, test__hr_at_10=h, test__ndcg_at_10=0.2, size__fraction_of_full=0.1)
        for s, h in enumerate([0.5, 0.7, 0.6])  # HR +.1 on every seed: beats
    ]
    tables = build_tables(make_report(frame(rows)).aggregated)
    md = to_markdown(tables)
    assert (
        "| full | 0.5000 ± 0.1000 [0.2516, 0.7484] | 0.2500 ± 0.0500 [0.1258, 0.3742] | 100.0 | 3 |"
        in md
    )
    assert (
        "| dpq | 0.6000 ± 0.1000 [0.3516, 0.8484]** | 0.2000 ± 0.0000 [0.2000, 0.2000] | 10.0 | 3 |"
        in md
    )
    tex = to_latex(tables)
    assert r"dpq & $0.6000 \pm 0.1000$\ddag & $0.2000 \pm 0.0000$ & $10.0$ & 3 \\" in tex
    assert "\\begin{tabular}{l cccc}" in tex and "---" in tex
    csv = to_csv_frame(tables).set_index("method")
    assert csv.loc["full", "gmf HR@10 std"] == pytest.approx(0.1)
    assert csv.loc["full", "gmf HR@10 ci_high"] == pytest.approx(
        0.5 + 4.302652729911275 * 0.1 / 3**0.5
    )
    assert csv.loc["dpq", "gmf Size % mean"] == pytest.approx(10.0)
    assert csv.loc["dpq", "gmf HR@10 beats_full"] and csv.loc["dpq", "gmf HR@10 reaches_full"]
    assert csv.loc["dpq", "gmf HR@10 p_value"] < 1e-6 and csv.loc["dpq", "gmf HR@10 n_paired"] == 3
    assert not csv.loc["dpq", "gmf NDCG@10 reaches_full"]  # 0, -.1, -.05: not shown either way
    assert csv.loc["dpq", "gmf NDCG@10 verdict"] == "inconclusive"
    assert {"gmf HR@10 n", "gmf HR@10 ci_low", "gmf HR@10 p_noninferior", "gmf settings"} <= set(
        csv.columns
    )


def test_loader_helpers() -> None:
    assert (
        eval_protocol_of({}, {"eval.protocol": "sampled", "eval.num_sampled": "50"}) == "sampled-50"
    )
    assert eval_protocol_of({"eval_protocol": "sampled-100"}, {}) == "sampled-100"
    assert eval_protocol_of({}, {}) == "full"
    knobs = json.loads(knobs_of({"method._target_": "x", "method.bits": "4", "method.budget": "None",
                                 "user_method.bits": "8", "train.lr": "0.1"}))  # fmt: skip
    assert knobs == {"bits": "4", "user.bits": "8"}
    assert parse_simple_filter("tags.model = 'gmf' AND params.train.epochs != \"5\"") == [
        ("tag", "model", "=", "gmf"), ("param", "train.epochs", "!=", "5")]  # fmt: skip
    with pytest.raises(ReportError, match="not supported with --runs-dir"):
        parse_simple_filter("metrics.x > 1")


def test_code_similarity_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(12, 4))
    cats = [["a"] if i < 5 else ["b", "c"] if i < 9 else ["c"] for i in range(12)]
    cats[0] = ["a", "b"]
    matrix, labels = code_similarity_matrix(codes, cats)
    members = {c: [i for i in range(12) if c in cats[i]] for c in labels}
    for (p, a), (q, b) in itertools.product(enumerate(labels), repeat=2):
        pairs = [(i, j) for i in members[a] for j in members[b] if i != j]
        expect = np.mean([np.mean(codes[i] == codes[j]) for i, j in pairs])
        assert matrix[p, q] == pytest.approx(expect), (a, b)
    assert np.allclose(matrix, matrix.T)


def test_code_similarity_toy_structure_and_png(tmp_path: Path) -> None:
    codes = np.array([[0, 0], [0, 0], [1, 1], [1, 1], [1, 0]])
    cats = [["x"], ["x"], ["y"], ["y"], []]
    matrix, labels = plot_code_similarity(codes, cats, tmp_path / "sim.png")
    assert labels == ["x", "y"]
    assert matrix.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    single, _ = code_similarity_matrix(np.array([[0], [1]]), [["x"], ["y"]])
    assert np.isnan(single[0, 0]) and single[0, 1] == 0.0  # one item: no within pair
    assert (tmp_path / "sim.png").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="category lists"):
        code_similarity_matrix(codes, cats[:2])
    chosen, labels = plot_code_similarity(codes, cats, tmp_path / "y.png", labels=["y"])
    assert labels == ["y"] and chosen.tolist() == [[1.0]]
    with pytest.raises(ValueError, match=r"no item has category \['z'\]; known: x, y"):
        plot_code_similarity(codes, cats, tmp_path / "z.png", labels=["z"])


def test_item_popularity_png(tmp_path: Path) -> None:
    counts = np.array([50, 1, 0, 7, 20, 3])
    path = plot_item_popularity(counts, tmp_path / "pop.png", "toy")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000
    with pytest.raises(ValueError):
        plot_item_popularity(np.array([]), tmp_path / "empty.png")
