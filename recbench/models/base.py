"""What every backbone provides to the training loop, the evaluators and the size accounting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.embeddings.base import EmbeddingFactory, embedding_layers
from recbench.errors import ConfigError


@dataclass(frozen=True)
class DataInfo:
    """The facts about the data a backbone needs to build itself (no training data)."""

    num_users: int
    num_items: int
    user_counts: Tensor  # (num_users + 1,), index 0 = padding
    item_counts: Tensor  # (num_items + 1,)
    global_mean: float = 0.0
    rating_range: tuple[float, float] | None = None

    @classmethod
    def from_prepared(cls, data) -> DataInfo:  # noqa: ANN001 - PreparedData, avoids an import cycle
        return cls(
            num_users=data.num_users,
            num_items=data.num_items,
            user_counts=data.user_counts,
            item_counts=data.item_counts,
            global_mean=data.global_mean,
            rating_range=data.rating_range,
        )


class Recommender(nn.Module):
    """A backbone. ``context`` is what a prediction is conditioned on: user ids ``(B,)`` for
    collaborative-filtering models, item sequences ``(B, L)`` for sequential models.

    * ``score(context, items)``: scores (logits, or predicted ratings for rating models) of
      ``items`` shaped ``(B, ...)`` given the context; returns ``items.shape``.
    * ``score_all(context)``: ``(B, num_items + 1)`` scores of every item (column 0 is padding and is
      ignored by evaluators), computed from the item layer's ``full_table()``.
    """

    #: Tasks this backbone can be trained for ("rating", "ranking", "sequential").
    tasks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, info: DataInfo) -> None:
        super().__init__()
        self.info = info

    def make_embedding(
        self, factory: EmbeddingFactory, num_ids: int, dim: int, counts: Tensor
    ) -> nn.Module:
        """Build one embedding layer for ``num_ids`` real ids (plus padding) through ``factory``."""
        return factory(num_embeddings=num_ids + 1, embedding_dim=dim, counts=counts)

    def score(self, context: Tensor, items: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_all(self, context: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def full_logits(self, context: Tensor) -> Tensor:
        """Scores of every item at every training position (full-softmax losses). For
        non-sequential models this is ``score_all``."""
        return self.score_all(context)

    def sampled_logits(
        self, context: Tensor, positives: Tensor, candidates: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Logits of the ``positives`` (shaped like the training positions: ``(B,)`` or ``(B, L)``)
        and ``(*positives.shape, S)`` logits of the ``(S,)`` candidates shared by every position
        (``train.loss=sampled_softmax``). Default: ``score`` of the candidates repeated for every
        position; backbones whose score is a dot product override it with one matrix product."""
        shape = (*positives.shape, candidates.shape[0])
        items = torch.cat([positives.unsqueeze(-1), candidates.expand(shape)], -1)
        scores = self.score(context, items)
        return scores[..., 0], scores[..., 1:]

    def aux_loss(self) -> Tensor:
        """Sum of the embedding layers' auxiliary losses (DPQ/MGQE commitment terms)."""
        layers = embedding_layers(self).values()
        terms = [layer.aux_loss() for layer in layers]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    @classmethod
    def check_task(cls, task: str) -> None:
        if task not in cls.tasks:
            raise ConfigError(
                f"model {cls.__name__} cannot be trained for task={task}; it supports "
                f"{', '.join(cls.tasks)} (set task= accordingly or pick another model)"
            )
