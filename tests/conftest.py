"""Shared fixtures: paths, small deterministic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("RECBENCH_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def method_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def method_node(name: str, seed: int = 0):  # noqa: ANN201 - an OmegaConf DictConfig
    """``conf/method/<name>.yaml`` as a node under a root holding ``seed``, so that knobs written as
    ``${seed}`` (e.g. ``hash_seed``) resolve as they do in a composed run."""
    from omegaconf import OmegaConf

    root = OmegaConf.create(
        {"seed": seed, "method": OmegaConf.load(CONF / "method" / f"{name}.yaml")}
    )
    return root.method


def model_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def shared_file(relative: str) -> Path:
    """A real data file from ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} not available")
    return path


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off in train mode (masks differ across devices and dtypes), the attention's
    ``dropout_p`` attribute included."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


def assert_grads_close(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    """Per-parameter gradients agree to 1e-3 of their own scale, the scale floored at 1e-4 of the
    largest gradient in the model.

    The floor matters: some gradients are zero in exact arithmetic (an attention layer's key bias
    shifts every logit of a query by the same amount, which the softmax ignores), so both sides
    hold only rounding noise (~1e-11) and a purely per-tensor tolerance compares noise with noise.
    """
    assert reference.keys() == other.keys()

    def dense(g: torch.Tensor) -> torch.Tensor:
        return (g.to_dense() if g.is_sparse else g).detach().cpu().to(torch.float64)

    ref = {name: dense(g) for name, g in reference.items()}
    floor = 1e-4 * max((float(g.abs().max()) for g in ref.values() if g.numel()), default=1.0)
    for name, expected in ref.items():
        scale = max(float(expected.abs().max()) if expected.numel() else 0.0, floor) or 1.0
        torch.testing.assert_close(
            dense(other[name]), expected, atol=1e-3 * scale, rtol=1e-3, msg=name
        )
