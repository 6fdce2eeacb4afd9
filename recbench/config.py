"""Typed schema of the whole configuration, registered in Hydra's ConfigStore as ``schema``.

``conf/config.yaml`` lists ``schema`` first in its defaults, so every YAML value is merged into these
dataclasses: a mistyped key (``train.epoch=3``) or a wrong type (``train.epochs=many``) fails while
Hydra composes the configuration, before any data is loaded. Groups whose contents differ per option
(``model``, ``method``, ``dataset.loader``) are free-form here and are checked against their
``_target_``'s signature by ``recbench.checks``.

``user_method`` is a config group whose options are the files of ``conf/method/``, registered here
(``register_configs``) rather than copied into ``conf/user_method/``: a new method YAML is at once a
user-table option, and ``user_method=qr`` on the command line selects it like any group. Its
default (``user_method: null`` in ``conf/config.yaml``) means "the same as ``method``".
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

#: One id per launch, shared with the launch's worker processes through the environment (joblib
#: and submitit workers inherit it): the ``${recbench_uid:}`` suffix of run and sweep folders, so
#: that two launches in the same second never share a folder (Hydra's ``now`` has 1 s resolution
#: in the sweep folder's name).
LAUNCH_ID_ENV = "RECBENCH_LAUNCH_ID"


def new_launch() -> str:
    """Start a launch (``recbench.run.cli``): a fresh ``<pid>-<4 random hex digits>`` in the
    environment, which the launch's workers inherit."""
    os.environ[LAUNCH_ID_ENV] = f"{os.getpid()}-{secrets.token_hex(2)}"
    return os.environ[LAUNCH_ID_ENV]


def launch_id() -> str:
    """The current launch's id (inherited by workers; a new one when none was started)."""
    return os.environ.get(LAUNCH_ID_ENV) or new_launch()


@dataclass
class DatasetConfig:
    """Where a dataset lives and how it is filtered and split (values in conf/dataset/*.yaml)."""

    name: str = MISSING
    root: str = "data"
    download: bool = False
    min_user_count: int = 0
    min_item_count: int = 0
    rating_range: list[float] | None = None
    rating_split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    tie_break: str = "file"  # order of equal timestamps: file, item or random (seeded by `seed`)
    loader: Any = MISSING
    categories: Any = None  # item -> category names (e.g. genres), for the report's Figure 8
    duplicates: str = "keep"  # repeated (user, item) events: keep | first | last | error


@dataclass
class TrainConfig:
    """The training loop's settings (values in conf/train/default.yaml and each model's YAML)."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0
    loss: str = "bce"
    num_negatives: int = 4
    num_sampled: int = 1000
    sampled_distribution: str = "popularity"
    patience: int = 10
    min_epochs: int = 0
    monitor: str | None = None
    device: str = "auto"
    progress: bool = True
    sparse: bool = False
    compile: bool = False
    fused_vq: bool | str = "auto"  # auto | true | false (recbench.embeddings.vq.use_fused_search)


@dataclass
class EvalConfig:
    """Evaluation settings (values in conf/eval/default.yaml)."""

    k: int = 10
    batch_size: int = 1024
    popularity_baseline: bool = True
    protocol: str = "full"
    num_sampled: int = 100
    negatives_dir: str | None = None
    serving_artifact: bool = True
    reference_dim: int = 64  # d of the full float32 model that size/fraction_of_full divides by
    test: bool = True  # false while tuning: the test split is never evaluated nor recorded


@dataclass
class TrackingConfig:
    """MLflow recording (values in conf/tracking/*.yaml; ``tracking=none`` switches it off)."""

    enabled: bool = True
    uri: str = "sqlite:///outputs/mlflow.db"
    experiment: str | None = None
    artifact_root: str = "outputs/mlartifacts"


@dataclass
class RecbenchConfig:
    """The root of the configuration tree."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: Any = MISSING
    method: Any = MISSING
    user_method: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    task: str = MISSING
    seed: int = 0
    preset: str | None = None
    stage: str = "run"  # "tune" for tuning trials (conf/tune/); reports leave those out
    force: bool = False
    resume: str = "same_code"  # same_code: reuse only FINISHED runs of identical code; any_code


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
METHOD_DIR = CONF_DIR / "method"

#: How each group is chosen on the command line, in the order of ``conf/config.yaml``; presets are
#: not in the defaults list and need a ``+``.
_HELP_GROUPS = (
    ("dataset=", "dataset", ""),
    ("model=", "model", ""),
    ("method=", "method", ""),
    ("user_method=", "method", "(default: same as method) "),
    ("train=", "train", ""),
    ("eval=", "eval", ""),
    ("tracking=", "tracking", ""),
    ("+experiment=", "experiment", "(a preset with its sweep; note the +) "),
    ("hydra/launcher=", "hydra/launcher", "(with -m; also joblib when installed) "),
)


def help_groups() -> str:
    """The ``--help`` list of groups and their options, written as they are typed (``+experiment=``
    with its plus, ``user_method=``), read from conf/ so that it never drifts."""
    width = max(len(flag) for flag, _, _ in _HELP_GROUPS) + 2
    lines = []
    for flag, folder, note in _HELP_GROUPS:
        names = ", ".join(sorted(p.stem for p in (CONF_DIR / folder).glob("*.yaml")))
        lines.append(f"{flag:<{width}}{note}{names}")
    return "\n".join(lines)


def register_configs() -> None:
    """Put the schema, the ``recbench_uid`` resolver and the ``user_method`` options into Hydra's
    ConfigStore (idempotent).

    Each ``user_method/<name>`` option is a defaults list that pulls ``conf/method/<name>.yaml``
    into the ``user_method`` package, so ``user_method=qr user_method.num_buckets=64`` works."""
    store = ConfigStore.instance()
    store.store(name="schema", node=RecbenchConfig)
    OmegaConf.register_new_resolver("recbench_uid", launch_id, use_cache=True, replace=True)
    for path in sorted(METHOD_DIR.glob("*.yaml")):
        store.store(
            group="user_method",
            name=path.stem,
            node={"defaults": [f"/method/{path.stem}@_here_", "_self_"]},
        )


register_configs()
if not OmegaConf.has_resolver("recbench_help_groups"):
    OmegaConf.register_new_resolver("recbench_help_groups", help_groups)
