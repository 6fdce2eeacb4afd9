"""Composition: the tensor-train, deep-hash and random-offset-block methods train one epoch and
evaluate on every backbone (GMF, NeuMF, SASRec, dot_bias), built from the composed configuration
exactly as ``python -m recbench.run method=<m> model=<b> train.epochs=1`` builds them (other
tests cover every method with GMF, NeuMF and SASRec only)."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.assembly import build_model, load_data
from recbench.engine.loop import FitOptions, fit
from recbench.size import model_size
from recbench.tasks import build_task
from tests.conftest import CONF, model_names

TINY_DATA = ["dataset.loader.num_users=60", "dataset.loader.num_items=50",
             "dataset.loader.events_per_user=10"]  # fmt: skip
METHODS = ["tt_rec", "dhe", "robe"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", model_names())
def test_method_trains_and_evaluates_on_backbone(model: str, method: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*TINY_DATA, f"model={model}", f"method={method}", "seed=3"]
        )
    assert cfg.method.get("hash_seed", 3) == 3  # hash seeds follow the run's seed
    data = load_data(cfg)
    model_ = build_model(cfg, data)
    parts = build_task(data, cfg, torch.device("cpu"))
    options = FitOptions(loss=cfg.train.loss, epochs=1, lr=0.01, progress=False, seed=0)
    result = fit(model_, parts.sampler, options)
    assert result.epochs_run == 1
    assert all(math.isfinite(v) for v in result.history[-1].values())
    metrics = parts.evaluator.evaluate(model_, "test")
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert model_size(model_).serving_bits > 0
