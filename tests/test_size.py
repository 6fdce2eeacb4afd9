"""Model Size %: serving bits against the full float32 backbone at the reference dimension
(``eval.reference_dim``, default 64), rebuilt so that what grows with d outside the tables counts."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.assembly import build
from recbench.embeddings.full import FullEmbedding
from recbench.errors import ConfigError
from recbench.models.gmf import GMF
from recbench.models.neumf import NeuMF
from recbench.models.sasrec import SASRec
from recbench.size import model_size, reference_bits
from tests.conftest import CONF
from tests.models.helpers import tiny_info

USERS, ITEMS = 943, 1682  # ml-100k's vocabulary


def test_full_gmf_at_d16_is_a_quarter_of_the_d64_reference() -> None:
    info = tiny_info(USERS, ITEMS)
    model = GMF(info, FullEmbedding, embedding_dim=16)
    ref = reference_bits(functools.partial(GMF), info, 64)
    size = model_size(model, ref, 64)
    # tables 32*(n_u + n_i)*d plus the output layer's d + 1 weights, at d = 16 and d = 64
    assert size.full_bits == 32 * ((USERS + ITEMS) * 64 + 65)
    assert size.serving_bits == 32 * ((USERS + ITEMS) * 16 + 17)
    assert size.fraction_of_full == pytest.approx(0.25, abs=1e-4)
    assert size.as_metrics()["size/reference_dim"] == 64.0
    # without a reference: the old same-shape rule (100 %)
    assert model_size(model).fraction_of_full == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cls", "knobs"),
    [(NeuMF, {"mlp_layers": [32, 16, 8]}), (SASRec, {"max_len": 20, "num_blocks": 2})],
)
def test_reference_is_the_rebuilt_backbone(cls: type, knobs: dict) -> None:
    info = tiny_info(50, 300)
    partial = functools.partial(cls, **knobs)
    at64 = cls(info, FullEmbedding, embedding_dim=64, **knobs)
    assert reference_bits(partial, info, 64) == model_size(at64).serving_bits
    small = cls(info, FullEmbedding, embedding_dim=16, **knobs)
    fraction = model_size(small, reference_bits(partial, info, 64), 64).fraction_of_full
    assert 0 < fraction < 0.3  # tables and d-wide layers shrink 4x or more; fixed layers do not


def test_reference_model_allocates_nothing() -> None:
    info = tiny_info(50, 10_000_000)  # a 10 M x 64 float table would need 2.4 GiB
    assert reference_bits(functools.partial(GMF), info, 64) == 32 * ((50 + 10_000_000) * 64 + 65)


def test_bad_reference_dim_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="eval.reference_dim=0"):
        reference_bits(functools.partial(GMF), tiny_info(), 0)
    with pytest.raises(ConfigError, match="eval.reference_dim=63 does not fit"):
        reference_bits(functools.partial(SASRec, num_heads=2), tiny_info(), 63)


def test_run_config_reference_dim_and_override() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model.embedding_dim=16"])
        other = compose("config", overrides=["model.embedding_dim=16", "eval.reference_dim=16"])
    assert cfg.eval.reference_dim == 64
    info = tiny_info(USERS, ITEMS)
    model = build(cfg.model)(info, item_embedding=FullEmbedding)
    ref = reference_bits(build(cfg.model), info, cfg.eval.reference_dim)
    assert model_size(model, ref, 64).fraction_of_full == pytest.approx(0.25, abs=1e-4)
    ref16 = reference_bits(build(other.model), info, other.eval.reference_dim)
    assert model_size(model, ref16, 16).fraction_of_full == pytest.approx(1.0)
    assert torch.device("meta") != next(model.parameters()).device
