"""Per-task wiring: which sampler feeds the training loop and which evaluator scores the model.

A task is "rating" (random split, MSE, RMSE/MAE), "ranking" (leave-last-two-out, sampled
negatives, full ranking with training items excluded) or "sequential" (the same protocol, with the
user's item sequence as the model's context, ``recbench.engine.samplers.sequences``). Ranking and
sequential tasks are evaluated by full ranking (``eval.protocol=full``) or against saved sampled
negatives (``eval.protocol=sampled``, ``recbench.engine.evaluators.sampled``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from recbench import record
from recbench.data.prepared import PreparedData
from recbench.engine.contracts import Evaluator, RankingEvaluation, Sampler
from recbench.engine.evaluators.full import RankingEvaluator
from recbench.engine.evaluators.rating import RatingEvaluator
from recbench.engine.evaluators.sampled import DEFAULT_DIRECTORY, SampledEvaluator
from recbench.engine.evaluators.sequences import SequenceContext
from recbench.engine.samplers.pairs import PairSampler
from recbench.engine.samplers.ratings import RatingSampler
from recbench.engine.samplers.sequences import SequenceSampler
from recbench.engine.samplers.shared import SharedNegatives
from recbench.errors import ConfigError

#: eval.protocol values for ranking and sequential tasks.
PROTOCOLS = ("full", "sampled")


@dataclass
class TaskParts:
    """The sampler and the evaluator of one run, and the metric monitored on validation.

    ``tags`` describe how the run was evaluated (``eval_protocol``: ``full``, or ``sampled`` with the
    number of sampled items, e.g. ``sampled-100``); record them with the run's other tags."""

    sampler: Sampler
    evaluator: Evaluator
    monitor: str
    has_validation: bool
    tags: dict[str, str] = field(default_factory=dict)


def _rating(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    evaluator = RatingEvaluator(data, device=device)
    return TaskParts(
        sampler=RatingSampler(data, cfg.train.batch_size, device),
        evaluator=evaluator,
        monitor=cfg.train.monitor or record.default_monitor(data.task, cfg.eval.k),
        has_validation=evaluator.has("valid"),
    )


def ranking_evaluator(
    data: PreparedData,
    cfg: DictConfig,
    device: torch.device,
    context_of: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> tuple[RankingEvaluation, dict[str, str]]:
    """The evaluator chosen by ``eval.protocol`` (full ranking, or the saved sampled negatives of
    this dataset and seed) and the tags that name it."""
    protocol = cfg.eval.get("protocol", "full")
    if protocol == "full":
        evaluator = RankingEvaluator(
            data, k=cfg.eval.k, batch_size=cfg.eval.batch_size, device=device, context_of=context_of
        )
        return evaluator, {"eval_protocol": "full"}
    if protocol == "sampled":
        evaluator = SampledEvaluator(
            data,
            seed=cfg.seed,
            num_sampled=cfg.eval.num_sampled,
            k=cfg.eval.k,
            batch_size=cfg.eval.batch_size,
            device=device,
            directory=cfg.eval.get("negatives_dir", None) or DEFAULT_DIRECTORY,
            context_of=context_of,
        )
        return evaluator, {"eval_protocol": f"sampled-{cfg.eval.num_sampled}"}
    raise ConfigError(
        f"eval.protocol={protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}"
    )


def shared_negatives(
    data: PreparedData, cfg: DictConfig, device: torch.device
) -> SharedNegatives | None:
    """The shared candidates of ``train.loss=sampled_softmax`` (``train.num_sampled`` per batch from
    ``train.sampled_distribution``); None for every other loss."""
    if cfg.train.loss != "sampled_softmax":
        return None
    return SharedNegatives(
        data.num_items,
        cfg.train.get("num_sampled", 1000),
        cfg.train.get("sampled_distribution", "popularity"),
        data.item_counts,
        device,
    )


def _ranking(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    evaluator, tags = ranking_evaluator(data, cfg, device)
    shared = shared_negatives(data, cfg, device)
    num_negatives = 0 if shared is not None else cfg.train.num_negatives
    return TaskParts(
        sampler=PairSampler(data, num_negatives, cfg.train.batch_size, device, shared),
        evaluator=evaluator,
        monitor=cfg.train.monitor or record.default_monitor(data.task, cfg.eval.k),
        has_validation=True,
        tags=tags,
    )


def _sequential(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    max_len = int(cfg.model.get("max_len", 50))
    shared = shared_negatives(data, cfg, device)
    full_softmax = cfg.train.loss == "ce" or shared is not None
    num_negatives = 0 if full_softmax else cfg.train.num_negatives
    if not full_softmax and num_negatives < 1:
        raise ConfigError(
            f"train.num_negatives={num_negatives} must be >= 1 for train.loss={cfg.train.loss} "
            "(SASRec uses 1), or use train.loss=ce"
        )
    evaluator, tags = ranking_evaluator(
        data, cfg, device, context_of=SequenceContext(data, max_len, device)
    )
    return TaskParts(
        sampler=SequenceSampler(
            data,
            max_len=max_len,
            num_negatives=num_negatives,
            batch_size=cfg.train.batch_size,
            device=device,
            shared=shared,
        ),
        evaluator=evaluator,
        monitor=cfg.train.monitor or record.default_monitor(data.task, cfg.eval.k),
        has_validation=True,
        tags=tags,
    )


TASK_BUILDERS: dict[str, Callable[[PreparedData, DictConfig, torch.device], TaskParts]] = {
    "rating": _rating,
    "ranking": _ranking,
    "sequential": _sequential,
}


def build_task(data: PreparedData, cfg: DictConfig, device: torch.device) -> TaskParts:
    return TASK_BUILDERS[data.task](data, cfg, device)
