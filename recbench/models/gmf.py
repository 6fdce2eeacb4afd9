"""GMF: generalized matrix factorization (He et al., WWW 2017, "Neural Collaborative Filtering").

score(u, i) = h . (p_u * q_i) + b: the element-wise product of the user and item embeddings, weighted
per dimension by a learned vector h. Trained on implicit feedback (BCE with sampled negatives by
default) or, as in the MGQE paper's item-to-item task, on ratings with a squared loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recbench.embeddings.base import EmbeddingFactory
from recbench.models.base import DataInfo, Recommender


class GMF(Recommender):
    """NCF's GMF branch with a linear output layer (``embedding_dim`` weights + 1 bias)."""

    tasks = ("ranking", "rating")

    def __init__(
        self,
        info: DataInfo,
        item_embedding: EmbeddingFactory,
        user_embedding: EmbeddingFactory | None = None,
        *,
        embedding_dim: int = 64,
    ) -> None:
        super().__init__(info)
        user_embedding = user_embedding or item_embedding
        self.user_embedding = self.make_embedding(
            user_embedding, info.num_users, embedding_dim, info.user_counts
        )
        self.item_embedding = self.make_embedding(
            item_embedding, info.num_items, embedding_dim, info.item_counts
        )
        self.output = nn.Linear(embedding_dim, 1)
        # NCF initialises the output layer with LeCun-uniform weights; a unit-scale start keeps
        # early logits comparable to the embeddings' products.
        nn.init.uniform_(
            self.output.weight, -((3 / embedding_dim) ** 0.5), (3 / embedding_dim) ** 0.5
        )
        nn.init.zeros_(self.output.bias)

    def score(self, context: Tensor, items: Tensor) -> Tensor:
        user = self.user_embedding(context)  # (B, d)
        item = self.item_embedding(items)  # (B, ..., d)
        user = user.reshape(user.shape[:1] + (1,) * (items.dim() - 1) + user.shape[1:])
        return self.output(user * item).squeeze(-1)

    def sampled_logits(
        self, context: Tensor, positives: Tensor, candidates: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(B,)`` positive and ``(B, S)`` shared-candidate logits: one matrix product."""
        weighted = self.user_embedding(context) * self.output.weight.squeeze(0)
        items = self.item_embedding(torch.cat([positives, candidates]))  # one lookup
        positive = (weighted * items[: len(positives)]).sum(-1) + self.output.bias
        return positive, weighted @ items[len(positives) :].T + self.output.bias

    def score_all(self, context: Tensor) -> Tensor:
        weighted = self.user_embedding(context) * self.output.weight.squeeze(0)
        return weighted @ self.item_embedding.full_table().T + self.output.bias
