"""Do two recorded runs (or two sweeps) give the same results to the last digit?

Why: a refactoring must not move a number. Run the same command on the old and the new commit
(e.g. ``python -m recbench.run -m +experiment=mgqe_table3_small ... hydra.sweep.dir=A``), then
compare the two folders: every result metric (``test/``, ``best/``, ``popularity/``, ``fit/``,
``size/``) of each run in A must equal the one of the same run in B exactly. Runs of two sweeps
are matched by their folder name without the job number (``3_gmf_dpq_s0`` -> ``gmf_dpq_s0``);
runs only in one folder, or not FINISHED, are listed. Timings and identities are not compared.

    python scripts/compare_runs.py outputs/before/t3small outputs/after/t3small
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

RESULT_PREFIXES = ("test/", "best/", "popularity/", "fit/", "size/")


def runs_in(folder: Path) -> dict[str, dict]:
    """Run records under ``folder`` by matching name (a run folder itself is one run)."""
    files = [folder / "metrics.json"] if (folder / "metrics.json").is_file() else []
    files = files or sorted(folder.glob("*/metrics.json"))
    out = {}
    for path in files:
        name = path.parent.name
        head, _, rest = name.partition("_")
        key = rest if head.isdigit() and rest else name
        out[key if files[0].parent != folder else "run"] = json.loads(path.read_text())
    return out


def compare(a: dict, b: dict) -> list[str]:
    """Result metrics that differ (or exist in one record only)."""
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    keys = sorted({k for k in (*ma, *mb) if k.startswith(RESULT_PREFIXES)})
    return [k for k in keys if ma.get(k) != mb.get(k) and not (k == "size/reference_dim")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = runs_in(args.before), runs_in(args.after)
    if not before or not after:
        empty = args.before if not before else args.after
        print(f"compare_runs: error: no metrics.json under {empty}", file=sys.stderr)
        return 2
    common = sorted(set(before) & set(after))
    differ = 0
    for name in common:
        a, b = before[name], after[name]
        if a.get("status") != "FINISHED" or b.get("status") != "FINISHED":
            print(f"{name}: not compared ({a.get('status')} / {b.get('status')})")
            continue
        keys = compare(a, b)
        differ += bool(keys)
        shown = ", ".join(f"{k}: {a['metrics'].get(k)} -> {b['metrics'].get(k)}" for k in keys[:3])
        print(f"{name}: " + ("identical" if not keys else f"{len(keys)} differ ({shown})"))
    for name in sorted(set(before) ^ set(after)):
        print(f"{name}: only in {'before' if name in before else 'after'}")
    print(f"{len(common)} compared, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
