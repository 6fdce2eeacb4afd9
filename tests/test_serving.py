"""The serving artifact of every method (and every backbone): loading it alone reproduces the
trained model's scores, and its payload matches ``serving_bits()`` up to byte padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from recbench import serving
from recbench.assembly import build_model, load_data
from recbench.engine.loop import FitOptions, fit
from recbench.tasks import build_task
from tests.conftest import CONF, method_names

TINY_DATA = ["dataset.loader.num_users=80", "dataset.loader.num_items=60",
             "dataset.loader.events_per_user=12"]  # fmt: skip


def trained(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_DATA, *overrides])
    data = load_data(cfg)
    model = build_model(cfg, data)
    parts = build_task(data, cfg, torch.device("cpu"))
    fit(
        model,
        parts.sampler,
        FitOptions(loss=cfg.train.loss, epochs=1, lr=0.01, progress=False, seed=0),
    )
    return cfg, model, parts


def export_and_check(cfg, model, parts, tmp_path: Path) -> serving.ServingReport:  # noqa: ANN001
    from omegaconf import OmegaConf

    contexts = serving.sample_contexts(parts.evaluator, model)
    report = serving.export(
        model, tmp_path, model_config=OmegaConf.to_container(cfg.model, resolve=True),
        contexts=contexts,
    )  # fmt: skip
    model.eval()
    with torch.no_grad():
        expected = model.score_all(contexts)
        got = serving.load_model(tmp_path).score_all(contexts)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    assert serving.verify(tmp_path) <= 1e-6
    # On disk: 8-byte length + JSON header + tensor payload, nothing else.
    assert report.file_bytes == report.header_bytes + report.payload_bytes
    assert (tmp_path / serving.WEIGHTS).stat().st_size == report.file_bytes
    # The payload is the formula up to rounding each packed tensor up to whole bytes.
    assert (
        0
        <= report.payload_bytes - report.formula_bits / 8
        < max(report.packed_tensors, 0) + 1e-9 + (1 if report.packed_tensors else 0)
    )
    return report


@pytest.mark.parametrize("method", method_names())
def test_every_method_round_trips_through_its_artifact(method: str, tmp_path: Path) -> None:
    cfg, model, parts = trained([f"method={method}"])
    report = export_and_check(cfg, model, parts, tmp_path)
    manifest = json.loads((tmp_path / serving.MANIFEST).read_text())
    assert manifest["size"]["formula_bits"] == report.formula_bits
    stored = load_file(str(tmp_path / serving.WEIGHTS))
    # Training-only tensors (a DPQ query table, a hash mapping) are never stored.
    for name, spec in manifest["layers"].items():
        assert spec["stored_bytes"] * 8 >= spec["serving_bits"]
        assert spec["stored_bytes"] * 8 - spec["serving_bits"] < 8 * len(spec["tensors"])
        for key in spec["tensors"]:
            assert f"{name}/{key}" in stored


@pytest.mark.parametrize("model_name", ["dot_bias", "neumf", "sasrec"])
def test_every_backbone_round_trips(model_name: str, tmp_path: Path) -> None:
    cfg, model, parts = trained([f"model={model_name}", "method=full"])
    export_and_check(cfg, model, parts, tmp_path)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    from recbench.errors import DataError

    with pytest.raises(DataError, match="export the run first"):
        serving.load_model(tmp_path)


@pytest.mark.parametrize("method", ["hashing", "bloom"])
def test_hashed_methods_reload_with_the_run_seeds_hash_seed(method: str, tmp_path: Path) -> None:
    cfg, model, parts = trained([f"method={method}", "seed=3"])
    export_and_check(cfg, model, parts, tmp_path)  # reloads with the recorded hash seed
    manifest = json.loads((tmp_path / serving.MANIFEST).read_text())
    assert {spec["meta"]["hash_seed"] for spec in manifest["layers"].values()} == {3}
