"""Where the time of one training step goes: PyTorch's profiler over real ``train_step`` calls.

Why: ``bench_throughput.py`` says how fast a step is; this says what it is made of (kernels, autograd,
optimizer, Python), which is what decides the next optimisation. It builds the same model, data and
batches as the benchmark (synthetic data at the benchmark's scales), runs warm-up steps, profiles
``--steps`` steps and prints the operators by self CPU time (or CUDA time on a GPU), plus a summary
split into forward, backward and optimizer step.

    python scripts/profile_step.py --model gmf --method full --scale ml1m --batch-size 4096
    python scripts/profile_step.py --model sasrec --method full --scale amazon --batch-size 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

import bench_throughput as bench  # noqa: E402

from recbench.data.prepared import prepare  # noqa: E402
from recbench.engine.device import flush_denormals  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gmf")
    parser.add_argument("--method", default="full")
    parser.add_argument("--scale", default="ml1m", choices=sorted(bench.SCALES))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = "sequential" if args.model == "sasrec" else "ranking"
    data = prepare(bench.synthetic(args.scale), task, seed=0)
    case = bench.setup_case(data, args.model, args.method, args.batch_size, False, args.device)
    model, parts, loss_fn, optimizer = case.model, case.parts, case.loss_fn, case.optimizer
    generator, device = case.generator, case.device

    def batches():  # noqa: ANN202 - endless stream of real batches
        while True:
            yield from parts.sampler.epoch(generator)

    stream = batches()
    flush_denormals()
    model.train()

    def step(batch) -> None:  # noqa: ANN001 - train_step split into labelled phases
        with record_function("phase: forward + loss"):
            loss = loss_fn(model, batch) + model.aux_loss().to(batch.items.device)
        optimizer.zero_grad(set_to_none=True)
        with record_function("phase: backward"):
            loss.backward()
        with record_function("phase: optimizer"):
            optimizer.step()

    for _ in range(args.warmup):
        step(next(stream))
    batches_ = [next(stream) for _ in range(args.steps)]  # sampling is not part of the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches_:
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    print(f"{args.model} / {args.method} / {args.scale}, batch {args.batch_size}, {args.steps} steps on "
          f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}")  # fmt: skip
    phases = [e for e in averages if e.key.startswith("phase: ")]
    total = sum(e.cpu_time_total for e in phases)
    for e in sorted(phases, key=lambda e: e.key):
        print(f"  {e.key:24} {e.cpu_time_total / args.steps / 1e3:8.3f} ms/step  "
              f"({100 * e.cpu_time_total / max(total, 1):4.1f} %)")  # fmt: skip
    print(f"  {'total':24} {total / args.steps / 1e3:8.3f} ms/step")
    ops = [e for e in averages if not e.key.startswith("phase: ")]
    ops.sort(key=lambda e: getattr(e, key), reverse=True)
    own = sum(getattr(e, key) for e in ops)
    print(f"  {'operator':44} {'self ms/step':>12} {'share':>7} {'calls/step':>10}")
    for e in ops[: args.rows]:
        print(f"  {e.key[:44]:44} {getattr(e, key) / args.steps / 1e3:12.3f} "
              f"{100 * getattr(e, key) / max(own, 1):6.1f}% {e.count / args.steps:10.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
