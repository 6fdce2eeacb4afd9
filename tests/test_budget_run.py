"""A budget the method cannot reach, as a run sees it: every table of the model is tried, the run's
floor is the largest floor among the tables that miss the budget, and the run is recorded FAILED
with that floor (metrics.json ``budget_floor`` and the MLflow tag of the same name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from recbench import record
from recbench.assembly import build_model, load_data
from recbench.errors import BudgetError, round_up
from tests.conftest import CONF
from tests.test_cli import TINY

TINY_DATA = [o for o in TINY if o.startswith("dataset.")]


def composed(*overrides: str):  # noqa: ANN201 - a DictConfig
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*TINY_DATA, *overrides])


def rank1(n: int, d: int = 64) -> float:
    """The low-rank floor by hand: rank 1 stores ``n + d`` floats of the ``n d`` full ones."""
    return (n + d) / (n * d)


@pytest.fixture(scope="module")
def data():  # noqa: ANN201 - PreparedData of the tiny synthetic dataset
    return load_data(composed())


def test_run_floor_is_the_largest_table_floor(data) -> None:  # noqa: ANN001
    users, items = rank1(data.num_users), rank1(data.num_items)
    assert items > users  # fewer items than users: the item table's floor is the larger
    with pytest.raises(BudgetError) as both:  # both tables miss it
        build_model(composed("method=low_rank", f"method.budget={users * 0.9}"), data)
    assert both.value.floor == items and both.value.num_ids == data.num_items
    assert f"also method.budget >= {round_up(users)} for LowRankEmbedding" in str(both.value)
    between = (users + items) / 2  # only the item table misses it
    with pytest.raises(BudgetError) as one:
        build_model(composed("method=low_rank", f"method.budget={between}"), data)
    assert one.value.floor == items and "also" not in str(one.value)
    build_model(composed("method=low_rank", f"method.budget={items}"), data)  # the floor fits


def test_user_method_floor_counts_and_names_its_key(data) -> None:  # noqa: ANN001
    """A user table of another method below its budget: its floor enters the max, named by the
    key the user typed; NeuMF asks for two tables per side and each is counted once."""
    users, items = rank1(data.num_users), rank1(data.num_items)
    cfg = composed(
        "model=neumf", "method=hashing", "method.budget=0.5", "user_method=low_rank",
        f"user_method.budget={users * 0.5}",
    )  # fmt: skip
    with pytest.raises(BudgetError) as caught:
        build_model(cfg, data)
    text = str(caught.value)
    assert text.startswith(f"user_method.budget={users * 0.5} is impossible for LowRankEmbedding")
    assert caught.value.floor == users and "also" not in text  # the two user layers: one floor
    assert "method.budget >= " in text and " method.budget" not in text.replace(
        "user_method.budget", ""
    )
    cfg = composed(
        "method=low_rank", f"method.budget={users * 0.9}", "user_method=low_rank",
        f"user_method.budget={users * 0.9}",
    )  # fmt: skip
    with pytest.raises(BudgetError) as caught:
        build_model(cfg, data)
    assert caught.value.floor == items and caught.value.key == "method.budget"
    assert f"also user_method.budget >= {round_up(users)}" in str(caught.value)


def test_unreachable_budget_is_recorded_failed_with_its_floor(tmp_path: Path, data) -> None:  # noqa: ANN001
    """In process, as ``recbench.run.main`` calls it, without a store (tests/test_cli.py runs the
    command itself: exit code 2, the MLflow run FAILED with the ``budget_floor`` tag)."""
    from recbench.run import execute

    budget = rank1(data.num_users) * 0.9
    cfg = composed(
        "method=low_rank", f"method.budget={budget}", "train.progress=false", "tracking=none"
    )
    with pytest.raises(BudgetError) as caught:
        execute(cfg, tmp_path)
    assert str(caught.value).startswith(f"method.budget={budget} is impossible for LowRank")
    saved = json.loads((tmp_path / record.METRICS_FILE).read_text())
    assert saved["status"] == "FAILED" and saved["error"] == str(caught.value)
    assert saved[record.BUDGET_FLOOR] == rank1(data.num_items)  # the larger of the two floors


class Tags:
    """A tracker that keeps what ``_record_end`` tells it."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.status = ""

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        self.status, self.tags["error"] = status, str(error)


@pytest.mark.parametrize("budget_error", [True, False])
def test_only_a_budget_error_records_a_floor(tmp_path: Path, budget_error: bool) -> None:
    from recbench.errors import ConfigError
    from recbench.run import Progress, _record_end

    exc = (
        BudgetError.unreachable("DPQEmbedding", 0.05, 943, 0.2734375, "num_subspaces=1")
        if budget_error
        else ConfigError("method.num_buckets=0 must be an integer >= 1")
    )
    tracker = Tags()
    cfg = composed()
    _record_end(cfg, exc, None, {"seed": "0"}, Progress(), tracker, tmp_path)  # type: ignore[arg-type]
    saved = json.loads((tmp_path / record.METRICS_FILE).read_text())
    assert saved["status"] == tracker.status == "FAILED" and saved["error"] == str(exc)
    if budget_error:
        assert saved[record.BUDGET_FLOOR] == 0.2734375
        assert tracker.tags[record.BUDGET_FLOOR] == "0.2734375"
    else:
        assert record.BUDGET_FLOOR not in saved and record.BUDGET_FLOOR not in tracker.tags


def test_budget_floor_script_reports_the_run_floor(data) -> None:  # noqa: ANN001
    """scripts/budget_floor.py prints the floor a failed run records (no bisection)."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("budget_floor", ROOT / "scripts/budget_floor.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    floor = script.floor(TINY_DATA, "low_rank", data)
    assert floor == rank1(data.num_items)
    assert script.feasible(TINY_DATA, "low_rank", floor, data) is None
    assert "is impossible" in script.feasible(TINY_DATA, "low_rank", floor * 0.99, data)
    assert script.floor(TINY_DATA, "pep", data) == 0.0  # PEP reaches every budget
