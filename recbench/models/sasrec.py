"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

The context is a batch of left-padded item sequences ``(B, L)`` (0 = padding, the most recent item in
the last column). Architecture, as in the paper and its reference code:

* input: item embedding (from the method factory) scaled by ``sqrt(d)``, plus a learned positional
  embedding, dropout, padding positions zeroed;
* ``num_blocks`` blocks, each: ``Q = LN(x)``; ``x = Q + Attention(Q, x, x)`` (causal, padding keys
  masked, attention dropout); ``x = LN(x)``; ``x = x + FFN(x)`` with the point-wise feed-forward
  ``Linear -> dropout -> ReLU -> Linear -> dropout``; padding positions zeroed again;
* a final layer norm gives one hidden state ``F_t`` per position;
* the score of item ``i`` after position ``t`` is ``F_t . E_i`` with the *same* item embedding layer
  (shared input/output embeddings); ``score_all`` uses the item layer's ``full_table()``.

Positions are counted from the right (the most recent item is position ``max_len``, the one before
``max_len - 1``, ...; padding gets the zero row), which is exactly the reference code's numbering of
a window left-padded to ``max_len`` and makes the output independent of how much left padding a batch
carries. Together with the explicit key-padding mask and the causal mask this gives the two
invariances the tests check: an item never influences an earlier position, and extra left padding
changes nothing. A context wider than ``max_len`` keeps its last ``max_len`` columns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.embeddings.base import EmbeddingFactory
from recbench.errors import ConfigError
from recbench.models.base import DataInfo, Recommender

#: The largest ``max_len`` accepted (the SASRec paper uses 50 for sparse data and 200 for ML-1M).
MAX_LEN_LIMIT = 1024


class CausalSelfAttention(nn.Module):
    """Multi-head attention with separate query and key/value inputs and a boolean mask
    (True = may attend); uses PyTorch's fused ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys: Tensor, allowed: Tensor) -> Tensor:
        b, length, dim = queries.shape
        h = self.num_heads

        def heads(x: Tensor) -> Tensor:
            return x.reshape(b, length, h, dim // h).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(queries)),
            heads(self.key(keys)),
            heads(self.value(keys)),
            attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(attended.transpose(1, 2).reshape(b, length, dim))


class PointWiseFeedForward(nn.Module):
    """Two position-wise linear layers (the paper's 1x1 convolutions) with ReLU and dropout."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, dim)
        self.outer = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.outer(F.relu(self.dropout(self.inner(x)))))


class SASRecBlock(nn.Module):
    """One self-attention block of the reference implementation (layer norm before each sublayer,
    the residual taken from the normalised input)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.forward_norm = nn.LayerNorm(dim, eps=1e-8)
        self.feed_forward = PointWiseFeedForward(dim, dropout)

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        q = self.attention_norm(x)
        x = q + self.attention(q, x, allowed)
        x = self.forward_norm(x)
        x = x + self.feed_forward(x)
        return x * keep


class SASRec(Recommender):
    """Causal self-attention over the user's recent items; next-item scores by dot product with the
    (compressed) item table."""

    tasks = ("sequential",)

    def __init__(
        self,
        info: DataInfo,
        item_embedding: EmbeddingFactory,
        user_embedding: EmbeddingFactory | None = None,
        *,
        embedding_dim: int = 64,
        max_len: int = 50,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(info)
        self.check_knobs(
            embedding_dim=embedding_dim,
            max_len=max_len,
            num_blocks=num_blocks,
            num_heads=num_heads,
            dropout=dropout,
        )
        # user_embedding is accepted for the common constructor shape; SASRec has no user table.
        del user_embedding
        self.embedding_dim = int(embedding_dim)
        self.max_len = int(max_len)
        d = self.embedding_dim
        self.item_embedding = self.make_embedding(
            item_embedding, info.num_items, d, info.item_counts
        )
        self.position_embedding = nn.Embedding(self.max_len + 1, d, padding_idx=0)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(d, int(num_heads), float(dropout)) for _ in range(int(num_blocks))
        )
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        # Reference code: Xavier-normal for every weight matrix outside the item layer (whose
        # initialisation belongs to the method, e.g. N(0, 0.01^2) for full embeddings).
        for name, param in self.named_parameters():
            if not name.startswith("item_embedding.") and param.dim() > 1:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.position_embedding.weight[0].zero_()

    @classmethod
    def check_knobs(
        cls, *, embedding_dim: int, max_len: int, num_blocks: int, num_heads: int, dropout: float
    ) -> None:
        """Impossible settings fail with one line."""
        if int(embedding_dim) < 1:
            raise ConfigError(f"model.embedding_dim={embedding_dim} must be >= 1, e.g. 64")
        if not 1 <= int(max_len) <= MAX_LEN_LIMIT:
            raise ConfigError(
                f"model.max_len={max_len} must be between 1 and {MAX_LEN_LIMIT} "
                "(the paper uses 50, or 200 for dense data such as ML-1M)"
            )
        if int(num_blocks) < 1:
            raise ConfigError(f"model.num_blocks={num_blocks} must be >= 1 (the paper uses 2)")
        if int(num_heads) < 1 or int(embedding_dim) % int(num_heads):
            raise ConfigError(
                f"model.num_heads={num_heads} must be >= 1 and divide model.embedding_dim="
                f"{embedding_dim}; e.g. num_heads=1"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1), e.g. 0.2")

    # ------------------------------------------------------------------ encoder
    def encode(self, context: Tensor) -> Tensor:
        """Hidden state ``(B, L, d)`` after each position of the left-padded sequences ``context``;
        rows at padding positions are zero."""
        if context.dim() != 2:
            raise ValueError(
                f"SASRec expects item sequences shaped (B, L); got {tuple(context.shape)}"
            )
        if context.shape[1] > self.max_len:
            context = context[:, -self.max_len :]
        length = context.shape[1]
        real = context != 0  # (B, L)
        keep = real.unsqueeze(-1).to(self.final_norm.weight.dtype)
        offset = self.max_len - length
        positions = torch.arange(offset + 1, offset + length + 1, device=context.device)
        positions = positions.unsqueeze(0) * real  # padding -> row 0 (zero, never trained)

        x = self.item_embedding(context) * math.sqrt(self.embedding_dim)
        x = x + self.position_embedding(positions)
        x = self.input_dropout(x) * keep

        # Position t may attend to positions <= t that hold a real item; every position may attend
        # to itself so that padding rows (all of whose keys are masked) stay finite; they are zeroed.
        causal = torch.ones(length, length, dtype=torch.bool, device=context.device).tril_()
        diagonal = torch.eye(length, dtype=torch.bool, device=context.device)
        allowed = (causal & real.unsqueeze(1)) | diagonal  # (B, L, L)
        allowed = allowed.unsqueeze(1)  # broadcast over heads
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x) * keep

    # ------------------------------------------------------------------ scoring
    def score(self, context: Tensor, items: Tensor) -> Tensor:
        """Per-position scores: ``items`` ``(B, L, ...)`` are scored against the hidden state of the
        same position (training); ``items`` ``(B, m)`` against the last position (next-item
        candidates). Returns ``items.shape``."""
        hidden = self.encode(context)
        if items.dim() == 2:
            return (hidden[:, -1:, :] * self.item_embedding(items)).sum(-1)
        if items.shape[1] != hidden.shape[1]:
            items = items[:, -hidden.shape[1] :]
        shape = hidden.shape[:2] + (1,) * (items.dim() - 2) + hidden.shape[2:]
        return (hidden.reshape(shape) * self.item_embedding(items)).sum(-1)

    def score_all(self, context: Tensor) -> Tensor:
        """``(B, num_items + 1)`` next-item scores after the last position."""
        return self.encode(context)[:, -1, :] @ self.item_embedding.full_table().T

    def sampled_logits(
        self, context: Tensor, positives: Tensor, candidates: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-position logits of the positives ``(B, L)`` and of the shared candidates
        ``(B, L, S)``: one ``(B L) x S`` matrix product with the candidates' embeddings."""
        hidden = self.encode(context)
        positives = positives[:, -hidden.shape[1] :]
        items = self.item_embedding(torch.cat([positives.reshape(-1), candidates]))  # one lookup
        positive = (hidden * items[: positives.numel()].view_as(hidden)).sum(-1)
        return positive, hidden @ items[positives.numel() :].T

    def full_logits(self, context: Tensor) -> Tensor:
        """``(B, L, num_items + 1)`` scores of every item after every position (softmax loss).

        The table is decoded before the sequence is encoded so that a compressed item layer (DPQ,
        MGQE) searches its codes once per step and the input lookups reuse them."""
        table = self.item_embedding.full_table()
        return self.encode(context) @ table.T
