#!/usr/bin/env python
"""Print the MGQE paper's Table 3 "Model Size %" as recbench's serving_bits() computes it.

GMF with d = 64 on the paper's ML-1M vocabulary (6,040 users, 3,416 items); no data needed.
Usage: python scripts/table3_sizes.py [--users 6040 --items 3416]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbench.assembly import method_factory  # noqa: E402
from recbench.models.base import DataInfo  # noqa: E402
from recbench.models.gmf import GMF  # noqa: E402
from recbench.size import model_size  # noqa: E402

PAPER = {"full": 100.0, "low_rank_r48": 75.5, "scalar_quant": 25.0, "dpq": 30.4, "mgqe": 20.7}
VARIANTS = [("full", {}), ("low_rank_r48", {}), ("scalar_quant", {}), ("dpq", {}), ("mgqe", {}),
            ("mgqe", {"variant": "unshared_k"}),
            ("mgqe", {"variant": "unshared_d", "num_subspaces": [64, 32], "num_centroids": [256, 256]})]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3416)
    args = parser.parse_args()
    counts = lambda n: torch.cat([torch.zeros(1), n - torch.arange(n)]).long()  # noqa: E731
    info = DataInfo(args.users, args.items, counts(args.users), counts(args.items))
    print(f"{'method':14} {'knobs':55} {'recbench %':>10} {'paper %':>8}")
    for name, knobs in VARIANTS:
        node = OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml")
        for key, value in knobs.items():
            node[key] = value
        model = GMF(info, method_factory(node))
        fraction = 100 * model_size(model).fraction_of_full
        paper = PAPER.get(name, float("nan")) if not knobs else float("nan")
        print(f"{name:14} {str(knobs):55} {fraction:>10.2f} {paper:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
