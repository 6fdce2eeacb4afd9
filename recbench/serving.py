"""The serving artifact: a trained model in the form an inference server would store it.

Why: ``serving_bits()`` is a formula; a user comparing methods must be able to check that the
formula is what a server really stores, and that the stored form alone reproduces the model's scores.

Layout of ``<run_dir>/serving/``:

* ``model.safetensors`` — every embedding layer's ``serving_tensors()`` under ``<layer>/<name>``
  (float tensors float32, integer codes bit-packed by ``recbench.embeddings.packing``) and every
  other parameter of the backbone as float32 under ``other/<name>``. Nothing recomputable is stored
  (hash mappings are recomputed from the family and seed in the manifest).
* ``manifest.json`` — format version, the backbone's config (``_target_`` and knobs), the data
  facts it was built with, per layer its class, ``serving_meta()``, ``serving_bits()`` and stored
  bytes, and the formula size next to the measured payload.
* ``reference.safetensors`` — contexts of a sample of test users and the trained model's scores of
  every item for them (not part of the serving size): ``verify`` compares against it.
* ``ids.npz`` — ``user_raw`` and ``item_raw``: the raw id of each table row (row ``i`` holds raw id
  ``*_raw[i - 1]``; row 0 is padding). A server needs it to map requests to rows; like the papers,
  the size accounting leaves it out (it is the same for every method).

Trust (format ``recbench-serving/2``): the manifest, written last, records the sha256 of every other
file (``files``) and of itself (``manifest_sha256``, computed with that value zeroed), and ``verify``
checks them before anything is loaded, so one flipped byte anywhere fails with one line naming the
file. Loading never runs code named by the artifact: the backbone must be a ``Recommender`` class
defined under ``recbench.models`` and every layer a ``CompressedEmbedding`` under
``recbench.embeddings`` (``allowed_class``); nothing is passed to Hydra's ``instantiate``. Artifacts
of format 1 (no checksums) still load but do not verify; re-export them.

Loading (``load_model``) rebuilds the backbone with plain ``FullEmbedding`` layers whose tables are
decoded from the artifact by each method's ``table_from_serving``, then loads the other parameters.
Safetensors' fixed overhead is an 8-byte length plus a JSON header; ``payload_bytes`` excludes both.

Command line::

    python -m recbench.serving export RUN_DIR   # (re)write RUN_DIR/serving from RUN_DIR/model.pt
    python -m recbench.serving verify RUN_DIR   # load the artifact alone, compare scores
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import re
import struct
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from recbench.embeddings.base import CompressedEmbedding, embedding_layers
from recbench.embeddings.full import FullEmbedding
from recbench.errors import DataError, RecbenchError
from recbench.models.base import DataInfo, Recommender
from recbench.size import model_size, other_parameters

FORMAT = "recbench-serving/2"
#: Formats ``load_model`` reads (1: before checksums; ``verify`` refuses it).
READABLE_FORMATS = ("recbench-serving/1", FORMAT)
_DIGEST_KEY = "manifest_sha256"
_HYDRA_KEYS = ("_partial_", "_recursive_", "_convert_")
FOLDER = "serving"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
REFERENCE = "reference.safetensors"
IDS = "ids.npz"
SAMPLE_USERS = 64
#: Largest difference between the artifact's scores and the trained model's, relative to the
#: scores' scale (``allowed_difference``): float32 keeps about 7 digits, and a network decoder (DHE)
#: evaluated over other batch shapes rounds differently, so an absolute 1e-6 failed logits of ~17.
TOLERANCE = 1e-6


def allowed_difference(reference: Tensor) -> float:
    """``TOLERANCE`` times the scores' scale, ``max(1, max |score|)``: absolute 1e-6 for scores
    within [-1, 1] (probabilities, small logits), float32 rounding of the largest score above."""
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return TOLERANCE * max(1.0, scale)


@dataclass(frozen=True)
class ServingReport:
    """What an export wrote and how it compares with the formula."""

    formula_bits: int  # model_size(model).serving_bits
    payload_bytes: int  # bytes of tensor data in model.safetensors
    file_bytes: int  # size of model.safetensors on disk (payload + 8 + header)
    header_bytes: int  # safetensors' JSON header (the container's overhead, with the 8-byte length)
    packed_tensors: int  # tensors whose size is rounded up to whole bytes

    @property
    def formula_bytes(self) -> float:
        return self.formula_bits / 8

    def as_metrics(self) -> dict[str, float]:
        return {f"serving/{k}": float(v) for k, v in asdict(self).items()} | {
            "serving/formula_bytes": self.formula_bytes
        }


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
    return 8 + int(length)


@torch.no_grad()
def export(
    model: Recommender,
    directory: str | Path,
    *,
    model_config: Mapping[str, Any],
    contexts: Tensor | None = None,
    raw_ids: tuple[np.ndarray, np.ndarray] | None = None,
) -> ServingReport:
    """Write ``model`` (in eval mode) in its serving form to ``directory``; see the module docstring.

    ``model_config`` is the resolved ``model`` node of the run (a Hydra partial); ``contexts`` are
    the model inputs of a sample of users whose scores are saved for ``verify``; ``raw_ids`` the
    raw user and item ids of rows 1..n (written to ``ids.npz``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    packed = 0
    for name, layer in embedding_layers(model).items():
        stored = layer.serving_tensors()
        for key, value in stored.items():
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            packed += int(value.dtype == torch.uint8)
        layers[name] = {
            "class": f"{type(layer).__module__}.{type(layer).__qualname__}",
            "meta": layer.serving_meta(),
            "serving_bits": int(layer.serving_bits()),
            "stored_bytes": sum(v.numel() * v.element_size() for v in stored.values()),
            "tensors": sorted(stored),
        }
    for name, param in other_parameters(model).items():
        tensors[f"other/{name}"] = param.detach().float().cpu().contiguous()
    weights = directory / WEIGHTS
    save_file(tensors, str(weights), metadata={"format": FORMAT})
    size = model_size(model)
    payload = sum(v.numel() * v.element_size() for v in tensors.values())
    report = ServingReport(
        formula_bits=size.serving_bits,
        payload_bytes=payload,
        file_bytes=weights.stat().st_size,
        header_bytes=_header_bytes(weights),
        packed_tensors=packed,
    )
    info = model.info
    manifest = {
        "format": FORMAT,
        "model": dict(model_config),
        "data": {
            "num_users": info.num_users,
            "num_items": info.num_items,
            "global_mean": info.global_mean,
            "rating_range": list(info.rating_range) if info.rating_range else None,
        },
        "layers": layers,
        "other": sorted(k.removeprefix("other/") for k in tensors if k.startswith("other/")),
        "size": asdict(report) | {"formula_bytes": report.formula_bytes},
    }
    if contexts is not None:
        contexts = contexts.to(_device(model))
        scores = model.score_all(contexts).float().cpu().contiguous()
        save_file(
            {"contexts": contexts.cpu().contiguous(), "scores": scores}, str(directory / REFERENCE)
        )
    if raw_ids is not None:
        np.savez(directory / IDS, user_raw=np.asarray(raw_ids[0]), item_raw=np.asarray(raw_ids[1]))
    manifest["files"] = {
        name: sha256_file(directory / name)
        for name in (WEIGHTS, REFERENCE, IDS)
        if (directory / name).is_file()
    }
    write_manifest(directory / MANIFEST, manifest)
    model.train(was_training)
    return report


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _zeroed(text: bytes) -> tuple[bytes, str] | None:
    """The manifest's bytes with its own digest replaced by zeros, and that digest; None when the
    manifest holds no digest."""
    match = re.search(rb'"' + _DIGEST_KEY.encode() + rb'": "([0-9a-f]{64})"', text)
    if match is None:
        return None
    return text[: match.start(1)] + b"0" * 64 + text[match.end(1) :], match.group(1).decode()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest with its own sha256 (over the file's bytes with that value zeroed)."""
    body = dict(manifest)
    body[_DIGEST_KEY] = "0" * 64
    text = json.dumps(body, indent=2, default=str).encode()
    digest = hashlib.sha256(text).hexdigest()
    path.write_bytes(
        text.replace(
            f'"{_DIGEST_KEY}": "{"0" * 64}"'.encode(), f'"{_DIGEST_KEY}": "{digest}"'.encode()
        )
    )


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no serving manifest at {path}; export the run first with "
            f"`python -m recbench.serving export {Path(directory).parent}`"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} is not a readable JSON manifest ({type(exc).__name__}); re-export the run"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{path} has format {got!r}, expected {FORMAT!r}")
    return manifest


def check_files(directory: str | Path) -> dict[str, Any]:
    """The manifest after checking its own digest and every file's sha256; DataError (one line
    naming the file) on any difference. Artifacts of format 1 have no checksums: an error too."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    path = directory / MANIFEST
    zeroed = _zeroed(path.read_bytes())
    if (
        manifest.get("format") != FORMAT
        or zeroed is None
        or not isinstance(manifest.get("files"), dict)
    ):
        raise DataError(
            f"{path} records no checksums (written by an older recbench); re-export with "
            f"`python -m recbench.serving export {directory.parent}`"
        )
    text, recorded = zeroed
    if hashlib.sha256(text).hexdigest() != recorded:
        raise DataError(
            f"{path} was modified after export (its sha256 does not match); re-export the run"
        )
    for name, expected in manifest["files"].items():
        target = directory / str(name)
        if Path(str(name)).name != name or not target.is_file():
            raise DataError(f"{target} listed in the manifest is missing; re-export the run")
        if sha256_file(target) != expected:
            raise DataError(
                f"{target} was modified after export (sha256 differs from the manifest's: "
                "corrupted or truncated); re-export the run"
            )
    if WEIGHTS not in manifest["files"]:
        raise DataError(f"{path} records no checksum for {WEIGHTS}; re-export the run")
    return manifest


def allowed_class(target: Any, package: str, base: type, what: str) -> type:
    """The class ``target`` names, only if it is a subclass of ``base`` defined in a module under
    ``package`` (recbench's own models or embeddings); nothing else is imported or called."""
    text = str(target)
    module_name, _, name = text.rpartition(".")
    refused = DataError(
        f"the artifact's {what} {text[:80]!r} is not one of recbench's own classes under {package}; "
        "refusing to load it (only artifacts written by recbench can be loaded)"
    )
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", text):
        raise refused
    if not module_name.startswith(package + ".") or not name.isidentifier():
        raise refused
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise refused from None
    obj = getattr(module, name, None)
    if not (
        isinstance(obj, type) and issubclass(obj, base) and obj.__module__.startswith(package + ".")
    ):
        raise refused
    return obj


def _no_targets(value: Any) -> bool:
    """True when ``value`` holds no ``_target_`` anywhere (nothing that asks to be instantiated)."""
    if isinstance(value, dict):
        return "_target_" not in value and all(_no_targets(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_targets(v) for v in value)
    return True


def model_factory(node: Mapping[str, Any]) -> Any:
    """``functools.partial(BackboneClass, **knobs)`` from the manifest's model node, after the
    allowlist check; replaces Hydra's ``instantiate``, which would import and call anything."""
    if not isinstance(node, Mapping):
        raise DataError("the artifact's model entry is not a mapping; re-export the run")
    cls = allowed_class(node.get("_target_"), "recbench.models", Recommender, "model class")
    knobs = {k: v for k, v in node.items() if k != "_target_" and k not in _HYDRA_KEYS}
    bad = [k for k in knobs if not str(k).isidentifier() or str(k).startswith("_")]
    if bad or not _no_targets(knobs):
        raise DataError(
            f"the artifact's model entry holds {'key ' + repr(bad[0]) if bad else 'a nested _target_'}; "
            "refusing to load it"
        )
    return functools.partial(cls, **knobs)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {path} ({' '.join(str(exc).split())[:120]}); re-export the run"
        ) from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Recommender:
    """Rebuild the served model from the artifact alone (no checkpoint, no training data)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    tensors = _load_tensors(directory / WEIGHTS)
    data = manifest["data"]
    info = DataInfo(
        num_users=data["num_users"],
        num_items=data["num_items"],
        user_counts=torch.zeros(data["num_users"] + 1, dtype=torch.long),
        item_counts=torch.zeros(data["num_items"] + 1, dtype=torch.long),
        global_mean=data["global_mean"],
        rating_range=tuple(data["rating_range"]) if data["rating_range"] else None,
    )
    plain = functools.partial(FullEmbedding)
    factory = model_factory(manifest["model"])
    classes = {
        name: allowed_class(
            spec.get("class"), "recbench.embeddings", CompressedEmbedding, f"layer class of {name}"
        )
        for name, spec in manifest["layers"].items()
    }
    model: Recommender = factory(info, item_embedding=plain, user_embedding=plain)
    rebuilt = embedding_layers(model)
    if set(rebuilt) != set(manifest["layers"]):
        raise DataError(
            f"the artifact's layers {sorted(manifest['layers'])} do not match the backbone's "
            f"{sorted(rebuilt)}; was it written by another recbench version?"
        )
    with torch.no_grad():
        for name, spec in manifest["layers"].items():
            cls = classes[name]
            missing = [key for key in spec["tensors"] if f"{name}/{key}" not in tensors]
            if missing:
                raise DataError(
                    f"{directory / WEIGHTS} lacks tensor {name}/{missing[0]}; re-export the run"
                )
            stored = {key: tensors[f"{name}/{key}"] for key in spec["tensors"]}
            table = cls.table_from_serving(stored, spec["meta"])
            target: FullEmbedding = rebuilt[name]  # type: ignore[assignment]
            if tuple(table.shape) != tuple(target.weight_table.weight.shape):
                raise DataError(
                    f"layer {name}: decoded table {tuple(table.shape)} does not fit "
                    f"{tuple(target.weight_table.weight.shape)}"
                )
            target.weight_table.weight.copy_(table)
        params = dict(model.named_parameters())
        for name in manifest["other"]:
            if name not in params or f"other/{name}" not in tensors:
                raise DataError(
                    f"the artifact's parameter {name!r} does not fit the backbone; re-export the run"
                )
            params[name].copy_(tensors[f"other/{name}"])
    return model.to(device).eval()


@torch.no_grad()
def verify(directory: str | Path, device: str | torch.device = "cpu") -> float:
    """Check every file's sha256 against the manifest (``check_files``), then the largest absolute
    difference between the artifact's scores and the trained model's saved reference scores;
    raises DataError on a changed file or when the difference exceeds ``allowed_difference``
    (``TOLERANCE`` relative to the scores' scale)."""
    directory = Path(directory)
    check_files(directory)
    reference = directory / REFERENCE
    if not reference.is_file():
        raise DataError(f"no reference scores at {reference}; re-export the run")
    ref = _load_tensors(reference)
    model = load_model(directory, device)
    scores = model.score_all(ref["contexts"].to(device)).float().cpu()
    diff = float((scores - ref["scores"]).abs().max()) if scores.numel() else 0.0
    allowed = allowed_difference(ref["scores"])
    if diff > allowed:
        raise DataError(
            f"the artifact in {directory} reproduces the scores only to {diff:.3g} (> {allowed:.3g}"
            f" = {TOLERANCE} x the scores' scale); a method's table_from_serving disagrees with its "
            "eval-mode full_table"
        )
    return diff


def sample_contexts(evaluator: Any, model: Recommender, users: int = SAMPLE_USERS) -> Tensor:
    """Model inputs of the first ``users`` test users: the ranking evaluator's contexts (user ids
    or input sequences), or plain user ids for rating models."""
    parts = getattr(evaluator, "parts", None)
    if parts and hasattr(parts.get("test"), "users"):
        chosen = parts["test"].users[:users]
        return evaluator.context_of(chosen, "test")
    return torch.arange(1, min(users, model.info.num_users) + 1, device=_device(model))


def export_run(run_dir: str | Path) -> ServingReport:
    """Re-export a recorded run from its folder (``config.yaml`` + ``model.pt``)."""
    from omegaconf import OmegaConf

    from recbench.assembly import build_model, load_data
    from recbench.tasks import build_task

    run_dir = Path(run_dir)
    for needed in ("config.yaml", "model.pt"):
        if not (run_dir / needed).is_file():
            raise DataError(
                f"{run_dir / needed} is missing; pass the folder of a finished run "
                "(outputs/runs/... or outputs/multirun/.../N_...)"
            )
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = load_data(cfg)
    model = build_model(cfg, data)
    try:
        state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one line
        raise DataError(
            f"cannot read {run_dir / 'model.pt'} ({type(exc).__name__}); retrain the run"
        ) from None
    model.load_state_dict(state)
    parts = build_task(data, cfg, torch.device("cpu"))
    return export(
        model,
        run_dir / FOLDER,
        model_config=OmegaConf.to_container(cfg.model, resolve=True),
        contexts=sample_contexts(parts.evaluator, model),
        raw_ids=(data.users.raw, data.items.raw),
    )


def code_layers(manifest: Mapping[str, Any]) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """The item layers of an artifact whose method stores integer codes (the layer class says so:
    ``stores_codes()``): ``{layer: (codes_from_serving, meta)}``. Item layers are named
    ``*item_embedding`` by every backbone (a model convention, not a method's)."""
    found = {}
    for name, layer in manifest.get("layers", {}).items():
        cls = allowed_class(
            layer.get("class"), "recbench.embeddings", CompressedEmbedding, f"layer class of {name}"
        )
        if name.endswith("item_embedding") and cls.stores_codes():
            found[name] = (cls.codes_from_serving, layer["meta"])
    return found


def read_item_codes(directory: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Codes of every item layer in ``code_layers`` as ``{layer: (n_items, positions)}``, and the
    raw item id of each row. Empty when no item layer stores codes; a DataError when ``ids.npz`` is
    missing."""
    directory = Path(directory)
    decoders = code_layers(read_manifest(directory))
    if not decoders:
        return {}, np.empty(0)
    if not (directory / IDS).is_file():
        raise DataError(
            f"{directory / IDS} is missing (artifacts written before ids were stored); re-export "
            f"with `python -m recbench.serving export {directory.parent}`"
        )
    tensors = _load_tensors(directory / WEIGHTS)
    codes = {}
    for name, (decode, meta) in decoders.items():
        mine = {
            k.removeprefix(name + "/"): v for k, v in tensors.items() if k.startswith(name + "/")
        }
        codes[name] = decode(mine, meta).cpu().numpy()
    with np.load(directory / IDS, allow_pickle=False) as ids:
        return codes, ids["item_raw"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbench.serving",
        description="Write or check the serving artifact of a recorded run.",
    )
    parser.add_argument("action", choices=("export", "verify"))
    parser.add_argument("run_dir", help="a run folder (holding config.yaml and model.pt)")
    args = parser.parse_args(argv)
    try:
        if args.action == "export":
            report = export_run(args.run_dir)
            print(
                f"wrote {Path(args.run_dir) / FOLDER}: {report.file_bytes:,} bytes on disk, "
                f"{report.payload_bytes:,} bytes of tensors, formula {report.formula_bytes:,.1f} bytes"
            )
        diff = verify(Path(args.run_dir) / FOLDER)
        print(f"verified: the artifact alone reproduces the saved scores (max |diff| {diff:.2e})")
    except RecbenchError as exc:
        print(f"recbench serving: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
