"""The device a run trains on, and the CPU's float mode.

Why a module of its own: the entry point resolves ``train.device`` before any data is loaded, and
the loop and the benchmark scripts set the same float mode; neither needs the loop for that.
"""

from __future__ import annotations

import torch

from recbench.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "train.device=cuda but no CUDA device is visible; use train.device=cpu or auto"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"train.device={name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU.

    Why: embedding rows start at N(0, 0.01^2) and Adam's second-moment estimates of rarely touched
    rows decay into the subnormal range, where x86 arithmetic is ~100x slower. On the MovieLens-1M
    scale this made a GMF step 40x slower (0.2 s instead of 5 ms, scripts/bench_throughput.py).
    Values below 1.2e-38 are numerically irrelevant here. No effect on CUDA.
    """
    torch.set_flush_denormal(True)
