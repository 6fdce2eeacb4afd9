"""Typed schema of the whole configuration, registered in Hydra's ConfigStore as ``schema``.

``conf/config.yaml`` lists ``schema`` first in its defaults, so every YAML value is merged into these
dataclasses: a mistyped key (``train.epoch=3``) or a wrong type (``train.epochs=many``) fails while
Hydra composes the configuration, before any data is loaded. Groups whose contents differ per option
(``model``, ``method``, ``dataset.loader``) are free-form here and are checked against their
``_target_``'s signature by ``recbench.checks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    loader: Any = MISSING
    categories: Any = None  # item -> category names (e.g. genres), for the report's Figure 8


@dataclass
class TrainConfig:
    """The training loop's settings (values in conf/train/default.yaml and each model's YAML)."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0
    loss: str = "bce"
    num_negatives: int = 4
    patience: int = 10
    monitor: str | None = None
    device: str = "auto"
    progress: bool = True
    sparse: bool = False
    compile: bool = False


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


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="schema", node=RecbenchConfig)


register_configs()
