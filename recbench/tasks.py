"""Per-task wiring: which sampler feeds the training loop and which evaluator scores the model.

A task is "rating" (random split, MSE, RMSE/MAE), "ranking" (leave-last-two-out, sampled
negatives, full ranking with training items excluded) or "sequential" (the same protocol, with the
user's item sequence as the model's context).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from recbench.data.prepared import PreparedData
from recbench.evaluation import RankingEvaluator, RatingEvaluator
from recbench.training import PairSampler, RatingSampler


@dataclass
class TaskParts:
    """The sampler and the evaluator of one run, and the metric monitored on validation."""

    sampler: object
    evaluator: RankingEvaluator | RatingEvaluator
    monitor: str
    has_validation: bool


def _rating(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    evaluator = RatingEvaluator(data, device=device)
    return TaskParts(
        sampler=RatingSampler(data, cfg.train.batch_size, device),
        evaluator=evaluator,
        monitor=cfg.train.monitor or "rmse",
        has_validation=evaluator.has("valid"),
    )


def _ranking(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    return TaskParts(
        sampler=PairSampler(data, cfg.train.num_negatives, cfg.train.batch_size, device),
        evaluator=RankingEvaluator(data, k=cfg.eval.k, batch_size=cfg.eval.batch_size, device=device),
        monitor=cfg.train.monitor or f"ndcg_at_{cfg.eval.k}",
        has_validation=True,
    )


TASK_BUILDERS: dict[str, Callable[[PreparedData, DictConfig, torch.device], TaskParts]] = {
    "rating": _rating,
    "ranking": _ranking,
}


def build_task(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    return TASK_BUILDERS[data.task](data, cfg, device)
