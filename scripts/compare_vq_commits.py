#!/usr/bin/env python
"""DPQ and MGQE training steps of the working tree against an earlier commit, in one process.

Why: on a shared machine, timings taken minutes apart differ by more than the change being
measured. This script builds GMF at a ``bench_throughput.py`` scale with full, DPQ and MGQE
embeddings twice, switches the second copy's DPQ/MGQE layers to the classes of ``--before`` (read
with ``git show``; the parameters are the same, so the copies start identical), and times the cases
in alternating windows of ``--steps`` steps. Reported per case: the median step time and the
median over rounds of its step time divided by the full model's in the same round.

    python scripts/compare_vq_commits.py --before edf1090 --batch-size 4096 --rounds 5

``--fused`` switches the working tree's copies to the compiled search (``train.fused_vq=true``), so
that ``--before`` names the eager implementation to compare with, e.g. the merge base:

    python scripts/compare_vq_commits.py --before f219488 --fused --check --clock thread

``--check`` first trains both copies of each method on the same batches for ``--check-steps``
steps and prints whether every parameter is still bit-identical (and the largest difference).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_throughput as bench  # noqa: E402

from recbench.data.prepared import prepare  # noqa: E402
from recbench.embeddings.base import embedding_layers  # noqa: E402
from recbench.embeddings.vq import use_fused_search  # noqa: E402
from recbench.engine.device import flush_denormals  # noqa: E402
from recbench.engine.loop import train_step  # noqa: E402


def load_old(commit: str, folder: Path) -> tuple[type, type]:
    """``DPQEmbedding`` and ``MGQEmbedding`` of ``commit``, importing that commit's helpers: its
    ``dpq.py`` (where the shared helpers lived before ``vq.py``) and its ``vq.py`` if it has one."""
    modules = {}
    names = ["vq", "dpq", "mgqe"]
    for name in names:
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:recbench/embeddings/{name}.py"],
            capture_output=True, text=True,
        )  # fmt: skip
        if shown.returncode:
            continue  # no vq.py before the shared module existed
        source = shown.stdout
        for other in names:  # the old modules import each other, not the working tree's
            source = source.replace(
                f"from recbench.embeddings.{other} import", f"from old_{other} import"
            )
        path = folder / f"old_{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"old_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["dpq"].DPQEmbedding, modules["mgqe"].MGQEmbedding


def check(cases: dict, steps: int) -> None:
    """Train each before/after pair on the same batches; print whether they stay bit-identical."""
    for method in ("dpq", "mgqe"):
        before = cases[f"{method} before"]
        after = next(case for label, case in cases.items() if label.startswith(f"{method} after"))
        before.model.train()
        after.model.train()
        batches = iter(after.parts.sampler.epoch(torch.Generator().manual_seed(1)))
        for _ in range(steps):
            batch = next(batches)
            loss_before = train_step(before.model, batch, before.loss_fn, before.optimizer)
            loss_after = train_step(after.model, batch, after.loss_fn, after.optimizer)
        old, new = before.model.state_dict(), after.model.state_dict()
        same = all(torch.equal(old[k], new[k]) for k in new)
        worst = max(float((old[k].double() - new[k].double()).abs().max()) for k in new)
        print(f"{method}: {steps} training steps on the same batches, parameters bit-identical: "
              f"{same} (largest difference {worst:.3g}; last losses {float(loss_before):.9g} / {float(loss_after):.9g})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="edf1090", help="commit of the earlier implementation")
    parser.add_argument("--scale", default="ml1m", choices=sorted(bench.SCALES))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--clock", choices=("wall", "thread"), default="wall",
        help="wall: perf_counter; thread: this thread's CPU time (time.thread_time), which leaves "
        "out the time the process waits for a core on a loaded machine (use with 1 thread)",
    )  # fmt: skip
    parser.add_argument(
        "--fused", action="store_true",
        help="the working tree's layers search with the compiled C loop (train.fused_vq=true)",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="first check bit-identity (see above)")
    parser.add_argument("--check-steps", type=int, default=20)
    args = parser.parse_args(argv)

    data = prepare(bench.synthetic(args.scale), "ranking", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        old_dpq, old_mgqe = load_old(args.before, Path(tmp))
        cases = {}
        for label, method, old in (("full", "full", None), ("dpq before", "dpq", old_dpq),
                                   ("dpq after", "dpq", None), ("mgqe before", "mgqe", old_mgqe),
                                   ("mgqe after", "mgqe", None)):  # fmt: skip
            case = bench.setup_case(data, "gmf", method, args.batch_size, False, "cpu")
            if old is not None:
                for layer in embedding_layers(case.model).values():
                    layer.__class__ = old
            elif args.fused and method != "full":
                use_fused_search(case.model)
                label += " (fused)"
            cases[label] = case
        flush_denormals()
        if args.check:
            check(cases, args.check_steps)
        streams = {}
        for label, case in cases.items():

            def gen(case=case):  # noqa: ANN202 - endless stream of real batches
                while True:
                    yield from case.parts.sampler.epoch(case.generator)

            streams[label] = gen()
            case.model.train()
            for _ in range(args.warmup):
                train_step(case.model, next(streams[label]), case.loss_fn, case.optimizer)
        times: dict[str, list[float]] = {label: [] for label in cases}
        clock = time.thread_time if args.clock == "thread" else time.perf_counter
        for _ in range(args.rounds):
            for label, case in cases.items():
                batches = [next(streams[label]) for _ in range(args.steps)]
                started = clock()
                for batch in batches:
                    train_step(case.model, batch, case.loss_fn, case.optimizer)
                times[label].append((clock() - started) / args.steps)
    print(f"GMF, {args.scale}, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
          f"before = {args.before}")  # fmt: skip
    print(f"{'case':20} {'ms/step':>9} {'x full':>7}")
    for label, values in times.items():
        ratio = statistics.median(v / f for v, f in zip(values, times["full"]))
        print(f"{label:20} {1e3 * statistics.median(values):9.2f} {ratio:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
