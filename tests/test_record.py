"""The record contract (``recbench.record``): metric keys build, parse back and point the right
way; the key lists agree with each other and with the embedding contract."""

from __future__ import annotations

import pytest

from recbench import record
from recbench.engine.evaluators.metrics import metrics_from_ranks
from recbench.engine.loop import is_improvement
from recbench.record import NON_KNOB_KEYS
from recbench.report.load import knobs_of


@pytest.mark.parametrize(
    ("text", "prefix", "base", "k"),
    [
        ("test/ndcg_at_10", "test", "ndcg", 10),
        ("best/hr_at_5", "best", "hr", 5),
        ("val/mrr", "val", "mrr", None),
        ("rmse", "", "rmse", None),
        ("train/loss", "train", "loss", None),
        ("size/fraction_of_full", "size", "fraction_of_full", None),
    ],
)
def test_parse_metric_reads_back_what_key_and_metric_name_build(
    text: str, prefix: str, base: str, k: int | None
) -> None:
    parsed = record.parse_metric(text)
    assert (parsed.prefix, parsed.base, parsed.k) == (prefix, base, k)
    rebuilt = record.metric_name(base, k)
    assert (record.key(prefix, rebuilt) if prefix else rebuilt) == text


def test_the_evaluators_name_their_metrics_through_the_record() -> None:
    import torch

    names = set(metrics_from_ranks(torch.tensor([0.0, 3.0, 20.0]), 7))
    assert names == {record.metric_name("hr", 7), record.metric_name("ndcg", 7), "mrr"}
    assert names == {"hr_at_7", "ndcg_at_7", "mrr"}


def test_direction_labels_and_default_monitor() -> None:
    for name in ("ndcg_at_10", "val/hr_at_20", "mrr", "best/mrr"):
        assert record.higher_is_better(name), name
    for name in ("rmse", "val/mae", "train/loss"):
        assert not record.higher_is_better(name), name
    assert is_improvement(0.2, 0.1, "ndcg_at_10") and not is_improvement(0.2, 0.1, "rmse")
    assert is_improvement(0.1, None, "rmse") and not is_improvement(float("nan"), None, "mrr")
    assert record.default_monitor("ranking", 5) == "ndcg_at_5"
    assert record.default_monitor("sequential", 10) == "ndcg_at_10"
    assert record.default_monitor("rating", 10) == "rmse"
    assert record.metric_label("test/hr_at_10") == "HR@10"
    assert record.metric_label("test/mrr") == "MRR"
    assert record.metric_label("best/ndcg_at_20") == "NDCG@20"


def test_key_lists_agree() -> None:
    assert (*record.HYDRA_PLUMBING, "budget") == NON_KNOB_KEYS
    assert set(record.RESUME_EXCLUDED) < set(record.CELL_EXCLUDED)
    assert "seed" in record.CELL_EXCLUDED and "seed" not in record.RESUME_EXCLUDED
    assert record.HYDRA_CONFIG == f"{record.HYDRA_DIR}/{record.CONFIG_FILE}"
    assert (
        record.is_knob("bits") and not record.is_knob("budget") and not record.is_knob("_target_")
    )


def test_the_report_reads_knobs_by_the_one_list() -> None:
    params = {f"method.{k}": "x" for k in NON_KNOB_KEYS} | {"method.bits": "4"}
    assert knobs_of(params) == '{"bits": "4"}'


def test_a_run_is_tagged_with_the_record_tags() -> None:
    """``recbench.run.run_identity`` writes exactly ``RUN_TAGS`` plus the code's identity."""
    from hydra import compose, initialize_config_dir

    from recbench import provenance
    from recbench.run import run_identity
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["method.budget=0.5"])
    identity = run_identity(cfg)
    assert list(identity) == [*record.RUN_TAGS, *provenance.current()]
    assert identity["budget"] == "0.5"
