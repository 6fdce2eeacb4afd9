"""Which ``method.budget`` values can each method reach on a dataset?

Why: an equal-memory sweep (``method=... method.budget=0.5,0.25,0.1,0.05``) is only a comparison
if every method fits every budget. Methods with a fixed part (DPQ/MGQE store K x d float32
centroids, scalar quantisation stores b-bit codes) cannot go below a floor that depends on the
vocabulary, so a budget that fits ML-1M can be impossible on ML-100K. This script builds the
model of each method at each asked budget exactly as a run would (``recbench.assembly.build_model``:
the same solvers, on the prepared data of the dataset) and prints OK or the reason, and the
smallest budget each method reaches (bisection to 3 significant digits).

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
from recbench.errors import ConfigError  # noqa: E402


def feasible(overrides: list[str], method: str, budget: float, data) -> str | None:  # noqa: ANN001
    """None when ``method`` fits ``budget`` on ``data``, else the solver's message."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*overrides, f"method={method}", f"method.budget={budget}"]
        )
    try:
        build_model(cfg, data)
    except ConfigError as exc:
        return str(exc)
    return None


def floor(overrides: list[str], method: str, data, hi: float = 1.0) -> float | None:  # noqa: ANN001
    """The smallest budget in (0, hi] the method reaches (None if not even ``hi``)."""
    if feasible(overrides, method, hi, data) is not None:
        return None
    lo = 1e-6
    while hi / lo > 1.001:
        mid = (lo * hi) ** 0.5
        if feasible(overrides, method, mid, data) is None:
            hi = mid
        else:
            lo = mid
    return hi


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
        print(
            f"{method:<14}{(f'{low:.3g}' if low else 'none'):>10}  "
            + "  ".join(f"{m:>6}" for m in marks)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
