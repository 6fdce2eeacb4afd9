"""CCE, PEP and learned low precision on every backbone, through ``fit`` for two epochs (so CCE
clusters and PEP freezes its mask via the ``on_epoch_end`` hook): training runs, and the serving
artifact written afterwards reproduces the scores with a payload equal to the formula."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.assembly import build_model, load_data
from recbench.embeddings.base import embedding_layers
from recbench.engine.loop import FitOptions, fit
from recbench.tasks import build_task
from tests.conftest import CONF
from tests.test_serving import TINY_DATA, export_and_check

EXTRA = {"cce": [], "pep": ["method.search_epochs=1"], "learned_quant": ["method.bits=4"]}


@pytest.mark.parametrize("model_name", ["gmf", "neumf", "sasrec", "dot_bias"])
@pytest.mark.parametrize("method", sorted(EXTRA))
def test_two_epochs_then_artifact(method: str, model_name: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[*TINY_DATA, f"model={model_name}", f"method={method}", *EXTRA[method]],
        )
    data = load_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    parts = build_task(data, cfg, torch.device("cpu"))
    options = FitOptions(loss=cfg.train.loss, epochs=2, lr=0.01, progress=False, seed=0)
    result = fit(model, parts.sampler, options)
    assert all(torch.isfinite(torch.tensor(row["train/loss"])) for row in result.history)
    for layer in embedding_layers(model).values():
        if method == "cce":
            assert layer.rounds.tolist() == [2] * layer.num_columns
        if method == "pep":
            assert bool(layer.retraining)
    export_and_check(cfg, model, parts, tmp_path)
