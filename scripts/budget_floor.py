"""Which ``method.budget`` values can each method reach on a dataset?

Why: an equal-memory sweep (``method=... method.budget=0.5,0.25,0.1,0.05``) is only a comparison
if every method fits every budget. Methods with a fixed part (DPQ/MGQE store K x d float32
centroids, scalar quantisation stores b-bit codes) cannot go below a floor that depends on the
vocabulary, so a budget that fits ML-1M can be impossible on ML-100K. This script builds the
model of each method at each asked budget exactly as a run would (``recbench.assembly.build_model``:
the same solvers, on the prepared data of the dataset) and prints OK or --, and the smallest
budget each method reaches: the floor a run records when it fails (``BudgetError.floor``, the
largest floor among the model's tables), which a report shows as "not reachable (min X %)".

    python scripts/budget_floor.py                                   # synthetic default, GMF
    python scripts/budget_floor.py dataset=ml-100k --budgets 0.5,0.25,0.1,0.05
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

import recbench.config  # noqa: E402,F401 - registers the schema
from recbench.assembly import build_model, load_data  # noqa: E402
from recbench.checks import options  # noqa: E402
from recbench.errors import BudgetError, ConfigError  # noqa: E402


def build_at(overrides: list[str], method: str, budget: float, data) -> None:  # noqa: ANN001
    """Build ``method``'s model at ``budget`` on ``data`` as a run would (raises its errors)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*overrides, f"method={method}", f"method.budget={budget}"]
        )
    build_model(cfg, data)


def feasible(overrides: list[str], method: str, budget: float, data) -> str | None:  # noqa: ANN001
    """None when ``method`` fits ``budget`` on ``data``, else the solver's message."""
    try:
        build_at(overrides, method, budget, data)
    except ConfigError as exc:
        return str(exc)
    return None


#: A budget below every method's floor (the smallest a config accepts is any number > 0).
TINY_BUDGET = 1e-12


def floor(overrides: list[str], method: str, data) -> float:  # noqa: ANN001
    """The smallest budget the method reaches on every table of the model: the floor of the
    ``BudgetError`` a budget below every floor raises (0 when even that one is reached, as PEP's
    empty table is)."""
    try:
        build_at(overrides, method, TINY_BUDGET, data)
    except BudgetError as exc:
        return exc.floor
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. dataset=ml-100k model=gmf"
    )
    parser.add_argument("--budgets", default="0.5,0.25,0.1,0.05")
    parser.add_argument(
        "--methods", default=None, help="comma list (default: every compressing method)"
    )
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = (
        args.methods.split(",") if args.methods else [m for m in options("method") if m != "full"]
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    data = load_data(cfg)
    print(f"{cfg.dataset.name} / {cfg.model._target_.rsplit('.', 1)[-1]}: {data.num_users:,} users, "
          f"{data.num_items:,} items")  # fmt: skip
    print(f"{'method':<14}{'smallest':>10}  " + "  ".join(f"{b:>6g}" for b in budgets))
    for method in methods:
        low = floor(args.overrides, method, data)
        marks = [
            "OK" if feasible(args.overrides, method, b, data) is None else "--" for b in budgets
        ]
        print(f"{method:<14}{low:>10.4g}  " + "  ".join(f"{m:>6}" for m in marks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
