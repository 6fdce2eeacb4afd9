"""Presets and composition: every backbone composes with every method (and every preset), and the
keras example's parameter counts come out as computed by hand on MovieLens 1M's vocabulary."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.assembly import build_model
from recbench.checks import preflight
from recbench.models.base import DataInfo
from recbench.size import model_size
from tests.conftest import CONF, method_names, model_names

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("model", model_names())
def test_every_model_composes_with_every_method(model: str) -> None:
    for method in method_names():
        assert preflight([f"model={model}", f"method={method}"]) is None, (model, method)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset: str) -> None:
    assert preflight([f"+experiment={preset}"]) is None


def ml1m_model(overrides: list[str]):  # noqa: ANN201
    """The preset's model on ML-1M's vocabulary (6,040 users, 3,706 movies) without the data."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)

    class Vocabulary:  # the parts of PreparedData that build_model reads
        num_users, num_items, global_mean, rating_range = 6040, 3706, 3.5, (1.0, 5.0)
        user_counts = torch.cat([torch.zeros(1), 6040 - torch.arange(6040)]).long()
        item_counts = torch.cat([torch.zeros(1), 3706 - torch.arange(3706)]).long()

    assert DataInfo.from_prepared(Vocabulary).num_items == 3706
    return build_model(cfg, Vocabulary)


def test_keras_full_model_has_the_examples_623744_parameters() -> None:
    model = ml1m_model(["+experiment=keras_full"])
    padding_rows = 2 * 64  # row 0 of each table is the padding id: zero, never trained
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable - padding_rows == 623_744 == (6040 + 3706) * 64
    assert model_size(model).serving_bits == 32 * 623_744


def test_keras_qr_md_size_by_hand() -> None:
    model = ml1m_model(["+experiment=keras_qr_md"])
    users = (
        51 + 120
    ) * 64  # m = 6040 // 50 = 120 remainder rows, ceil(6040 / 120) = 51 quotient rows
    movies = 400 * 64 + 1300 * 32 + (3706 - 1700) * 16 + 32 * 64 + 16 * 64  # blocks + projections
    assert model_size(model).serving_bits == 32 * (users + movies) == 32 * 113_312
    assert sum(p.numel() for p in model.parameters()) == users + movies
