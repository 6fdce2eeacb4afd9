"""Serving artifacts you can trust: any changed byte fails ``verify`` with one line naming the
file, and a crafted manifest can neither import nor call anything outside recbench."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recbench import serving
from recbench.assembly import build_model, load_data
from recbench.errors import DataError
from recbench.tasks import build_task
from tests.conftest import CONF, ROOT


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["dataset.loader.num_users=80", "dataset.loader.num_items=60",
                                           "dataset.loader.events_per_user=12", "method=dpq"])  # fmt: skip
    data = load_data(cfg)
    model = build_model(cfg, data)
    parts = build_task(data, cfg, torch.device("cpu"))
    folder = tmp_path_factory.mktemp("artifact") / "serving"
    serving.export(model, folder, model_config=OmegaConf.to_container(cfg.model, resolve=True),
                   contexts=serving.sample_contexts(parts.evaluator, model),
                   raw_ids=(data.users.raw, data.items.raw))  # fmt: skip
    return folder


def copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "serving"
    target.mkdir()
    for f in folder.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


def verify_cli(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recbench.serving", "verify", str(folder.parent)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_tolerance_follows_the_scores_scale() -> None:
    """float32 rounding of a logit of ~17 (a DHE run's 5.7e-6) is not a broken artifact, while
    the same error on scores within [-1, 1] still is."""
    assert serving.allowed_difference(torch.tensor([0.3, -0.9])) == serving.TOLERANCE
    assert serving.allowed_difference(torch.tensor([-16.7, 2.0])) == pytest.approx(16.7e-6)
    assert 5.7e-6 <= serving.allowed_difference(torch.tensor([16.7]))
    assert 5.7e-6 > serving.allowed_difference(torch.tensor([0.5]))


def test_a_clean_artifact_verifies(artifact: Path) -> None:
    assert serving.verify(artifact) <= serving.TOLERANCE
    manifest = json.loads((artifact / serving.MANIFEST).read_text())
    assert set(manifest["files"]) == {serving.WEIGHTS, serving.REFERENCE, serving.IDS}


@pytest.mark.parametrize(
    "name", [serving.WEIGHTS, serving.REFERENCE, serving.IDS, serving.MANIFEST]
)
@pytest.mark.parametrize("where", [0.5, -1])
def test_any_flipped_byte_fails_naming_the_file(
    artifact: Path, tmp_path: Path, name: str, where: float
) -> None:
    folder = copy(artifact, tmp_path)
    data = bytearray((folder / name).read_bytes())
    at = int(len(data) * where) if where > 0 else len(data) - 2  # the middle, or the last rows
    data[at] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(DataError) as caught:
        serving.verify(folder)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_a_flip_outside_the_reference_users_fails_on_the_command_line(
    artifact: Path, tmp_path: Path
) -> None:
    folder = copy(artifact, tmp_path)
    data = bytearray((folder / serving.WEIGHTS).read_bytes())
    data[-3] ^= 0x10  # last row of the last tensor: not among the 64 reference users' scores
    (folder / serving.WEIGHTS).write_bytes(bytes(data))
    proc = verify_cli(folder)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert serving.WEIGHTS in line and "modified after export" in line


def test_a_truncated_file_is_one_line(artifact: Path, tmp_path: Path) -> None:
    folder = copy(artifact, tmp_path)
    weights = folder / serving.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    proc = verify_cli(folder)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and serving.WEIGHTS in proc.stderr
    with pytest.raises(DataError, match="cannot read"):  # loading without verify: one line too
        serving.load_model(folder)


def forge(folder: Path, change) -> None:  # noqa: ANN001
    """Rewrite the manifest with ``change`` applied and every checksum recomputed, as an attacker
    who can write the folder would: only the allowlist stands in the way."""
    manifest = json.loads((folder / serving.MANIFEST).read_text())
    manifest.pop("manifest_sha256")
    change(manifest)
    manifest["files"] = {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in manifest["files"]
    }
    serving.write_manifest(folder / serving.MANIFEST, manifest)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["model"].update(
            {"_target_": "pathlib.Path.write_text", "self": "{out}", "data": "x"}
        ),
        lambda m: m["model"].update({"_target_": "recbench.models.gmf.torch.save"}),
        lambda m: m["model"].update(
            {"embedding_dim": {"_target_": "pathlib.Path.write_text", "self": "{out}", "data": "x"}}
        ),
        lambda m: next(iter(m["layers"].values())).update({"class": "hydra.utils.get_class"}),
        lambda m: next(iter(m["layers"].values())).update(
            {"class": "recbench.embeddings.base.torch.nn.Linear"}
        ),
        lambda m: next(iter(m["layers"].values())).update({"class": "recbench.models.gmf.GMF"}),
    ],
    ids=[
        "model-write_text",
        "model-nested-attr",
        "nested-target",
        "layer-get_class",
        "layer-torch",
        "layer-not-embedding",
    ],
)
def test_a_crafted_manifest_runs_nothing(artifact: Path, tmp_path: Path, change) -> None:  # noqa: ANN001
    folder = copy(artifact, tmp_path)
    out = tmp_path / "pwned.txt"

    def apply(manifest: dict) -> None:
        change(manifest)
        text = json.dumps(manifest).replace("{out}", str(out))
        manifest.clear()
        manifest.update(json.loads(text))

    forge(folder, apply)
    serving.check_files(folder)  # the checksums are consistent: integrity alone would pass
    with pytest.raises(DataError, match="refusing to load"):
        serving.verify(folder)
    assert not out.exists()
