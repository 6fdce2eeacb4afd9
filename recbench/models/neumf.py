"""NeuMF: neural matrix factorization (He et al., WWW 2017, "Neural Collaborative Filtering").

Two branches with their own embeddings, fused by one output layer:

* GMF branch: ``p_u * q_i`` (element-wise product of a user and an item embedding of size d).
* MLP branch: the concatenation ``[p'_u ; q'_i]`` (two more embeddings of size d, so the tower's input
  is 2d wide) through a pyramid of ReLU layers (``mlp_layers``; default ``[2d, d, d/2]`` =
  ``[128, 64, 32]`` for d = 64, the paper's rule "embedding size e gives the tower 2e -> e -> e/2").
* Output: ``h . [GMF vector ; last MLP layer] + b`` (a logit; BCE with sampled negatives).

All four embedding layers come from the method factories (the item factory builds the two item
layers, the user factory the two user layers), so a compression method applies to every one of them
and the size accounting counts them all. No pre-training (as in the MGQE paper).

Scoring every item (``score_all``) splits the tower's first layer ``W [p'_u ; q'_i] + c`` into
``W_u p'_u + (W_i q'_i + c)``: the item half is computed once per call from the item layer's
``full_table()``, then the ``(users x items)`` pairs go through the rest of the tower in chunks that
bound the memory (``score_chunk`` pair-activations at a time). The GMF branch is one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.embeddings.base import EmbeddingFactory
from recbench.errors import ConfigError
from recbench.models.base import DataInfo, Recommender


def _lecun_uniform_(weight: Tensor) -> None:
    bound = (3.0 / weight.shape[1]) ** 0.5
    nn.init.uniform_(weight, -bound, bound)


class NeuMF(Recommender):
    """GMF and MLP branches with separate embeddings, concatenated into a linear output layer."""

    tasks = ("ranking",)

    def __init__(
        self,
        info: DataInfo,
        item_embedding: EmbeddingFactory,
        user_embedding: EmbeddingFactory | None = None,
        *,
        embedding_dim: int = 64,
        mlp_layers: Sequence[int] | None = None,
        dropout: float = 0.0,
        score_chunk: int = 1 << 22,
    ) -> None:
        super().__init__(info)
        if mlp_layers is None:
            mlp_layers = [2 * embedding_dim, embedding_dim, max(embedding_dim // 2, 1)]
        layers = [int(x) for x in mlp_layers]
        self.check_knobs(embedding_dim=embedding_dim, mlp_layers=layers, dropout=dropout)
        self.embedding_dim = int(embedding_dim)
        self.mlp_layers = layers
        self.score_chunk = int(score_chunk)
        user_embedding = user_embedding or item_embedding
        d = self.embedding_dim
        self.gmf_user_embedding = self.make_embedding(
            user_embedding, info.num_users, d, info.user_counts
        )
        self.gmf_item_embedding = self.make_embedding(
            item_embedding, info.num_items, d, info.item_counts
        )
        self.mlp_user_embedding = self.make_embedding(
            user_embedding, info.num_users, d, info.user_counts
        )
        self.mlp_item_embedding = self.make_embedding(
            item_embedding, info.num_items, d, info.item_counts
        )

        # First tower layer, split into its user and item halves (same function as one Linear on the
        # concatenation [p'_u ; q'_i]; the split lets score_all reuse the item half for every user).
        self.mlp_user_in = nn.Linear(d, layers[0], bias=False)
        self.mlp_item_in = nn.Linear(d, layers[0], bias=True)
        self.tower = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(d + layers[-1], 1)

        # NCF: Glorot-uniform tower weights, LeCun-uniform output layer, zero biases.
        first = torch.empty(layers[0], 2 * d)
        nn.init.xavier_uniform_(first)
        with torch.no_grad():
            self.mlp_user_in.weight.copy_(first[:, :d])
            self.mlp_item_in.weight.copy_(first[:, d:])
        nn.init.zeros_(self.mlp_item_in.bias)
        for layer in self.tower:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        _lecun_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @classmethod
    def check_knobs(cls, *, embedding_dim: int, mlp_layers: Sequence[int], dropout: float) -> None:
        """Impossible settings fail with one line (before any training)."""
        if int(embedding_dim) < 1:
            raise ConfigError(f"model.embedding_dim={embedding_dim} must be >= 1, e.g. 64")
        if len(mlp_layers) == 0:
            raise ConfigError(
                "model.mlp_layers is empty; NeuMF needs at least one hidden layer, e.g. [128, 64, 32]"
            )
        if any(int(x) < 1 for x in mlp_layers):
            raise ConfigError(f"model.mlp_layers={list(mlp_layers)} must be positive layer sizes")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")

    # ------------------------------------------------------------------ branches
    def _tower(self, hidden: Tensor) -> Tensor:
        """The MLP above the first layer's pre-activation ``hidden``."""
        hidden = self.dropout(F.relu(hidden))
        for layer in self.tower:
            hidden = self.dropout(F.relu(layer(hidden)))
        return hidden

    def _fuse(self, gmf: Tensor, mlp: Tensor) -> Tensor:
        """Output layer on [gmf ; mlp] without materialising the concatenation."""
        d = self.embedding_dim
        w = self.output.weight.squeeze(0)
        return gmf @ w[:d] + mlp @ w[d:] + self.output.bias

    def score(self, context: Tensor, items: Tensor) -> Tensor:
        shape = context.shape[:1] + (1,) * (items.dim() - 1) + (-1,)
        gmf = self.gmf_user_embedding(context).reshape(shape) * self.gmf_item_embedding(items)
        user_half = self.mlp_user_in(self.mlp_user_embedding(context)).reshape(shape)
        item_half = self.mlp_item_in(self.mlp_item_embedding(items))
        mlp = self._tower(user_half + item_half)
        return self._fuse(gmf, mlp)

    def score_all(self, context: Tensor) -> Tensor:
        w = self.output.weight.squeeze(0)
        d = self.embedding_dim
        # GMF branch: (p_u * h_gmf) . q_i for every item, one matrix product.
        gmf_user = self.gmf_user_embedding(context) * w[:d]
        scores = gmf_user @ self.gmf_item_embedding.full_table().T + self.output.bias
        # MLP branch: first-layer halves, then the rest of the tower on (users x items) chunks.
        user_half = self.mlp_user_in(self.mlp_user_embedding(context))  # (B, h0)
        item_half = self.mlp_item_in(self.mlp_item_embedding.full_table())  # (n + 1, h0)
        num_cols = item_half.shape[0]
        rows = max(1, self.score_chunk // max(num_cols * item_half.shape[1], 1))
        w_mlp = w[d:]
        parts = []
        for start in range(0, user_half.shape[0], rows):
            pair = user_half[start : start + rows, None, :] + item_half[None, :, :]
            parts.append(self._tower(pair) @ w_mlp)
        mlp_scores = torch.cat(parts) if parts else scores.new_zeros(0, num_cols)
        return scores + mlp_scores
