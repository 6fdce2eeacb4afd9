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


def model_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def shared_file(relative: str) -> Path:
    """A real data file from ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} not available")
    return path
