"""Dot product with biases, for rating prediction (Koren-style biased matrix factorization).

prediction = mu + b_u + b_i + p_u . q_i, optionally squashed into the rating range with a scaled
sigmoid: lo + (hi - lo) * sigmoid(...). Switching the biases off gives the blog post's plain dot
model; no biases plus ``sigmoid_range: [0, 5]`` gives the keras example's model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recbench.embeddings.base import EmbeddingFactory
from recbench.errors import ConfigError
from recbench.models.base import DataInfo, Recommender


class DotBias(Recommender):
    """Biased dot-product rating model (also usable for ranking: scores are predicted ratings)."""

    tasks = ("rating", "ranking")

    def __init__(
        self,
        info: DataInfo,
        item_embedding: EmbeddingFactory,
        user_embedding: EmbeddingFactory | None = None,
        *,
        embedding_dim: int = 64,
        use_bias: bool = True,
        sigmoid_range: list[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(info)
        if sigmoid_range is not None and (
            len(sigmoid_range) != 2 or not sigmoid_range[0] < sigmoid_range[1]
        ):
            raise ConfigError(
                f"model.sigmoid_range={list(sigmoid_range)} must be [low, high] with low < high, "
                "e.g. [0.5, 5.0], or null for no squashing"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        user_embedding = user_embedding or item_embedding
        self.user_embedding = self.make_embedding(
            user_embedding, info.num_users, embedding_dim, info.user_counts
        )
        self.item_embedding = self.make_embedding(
            item_embedding, info.num_items, embedding_dim, info.item_counts
        )
        self.use_bias = use_bias
        self.sigmoid_range = None if sigmoid_range is None else tuple(map(float, sigmoid_range))
        self.dropout = nn.Dropout(dropout)
        if use_bias:
            self.user_bias = nn.Embedding(info.num_users + 1, 1, padding_idx=0)
            self.item_bias = nn.Embedding(info.num_items + 1, 1, padding_idx=0)
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.offset = nn.Parameter(torch.tensor(self._initial_offset(info.global_mean)))

    def _initial_offset(self, mean: float) -> float:
        """Start at the global mean rating, in the link function's input space."""
        if self.sigmoid_range is None:
            return float(mean)
        low, high = self.sigmoid_range
        p = min(max((mean - low) / (high - low), 1e-3), 1 - 1e-3)
        return math.log(p / (1 - p))

    def _link(self, raw: Tensor) -> Tensor:
        if self.sigmoid_range is None:
            return raw
        low, high = self.sigmoid_range
        return low + (high - low) * torch.sigmoid(raw)

    def score(self, context: Tensor, items: Tensor) -> Tensor:
        user = self.dropout(self.user_embedding(context))
        item = self.dropout(self.item_embedding(items))
        user = user.reshape(user.shape[:1] + (1,) * (items.dim() - 1) + user.shape[1:])
        raw = (user * item).sum(-1)
        if self.use_bias:
            ub = self.user_bias(context).reshape(context.shape[:1] + (1,) * (items.dim() - 1))
            raw = raw + ub + self.item_bias(items).squeeze(-1) + self.offset
        return self._link(raw)

    def score_all(self, context: Tensor) -> Tensor:
        raw = self.user_embedding(context) @ self.item_embedding.full_table().T
        if self.use_bias:
            raw = raw + self.user_bias(context) + self.item_bias.weight.T + self.offset
        return self._link(raw)
