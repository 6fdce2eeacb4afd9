"""Hashing trick (Weinberger et al. 2009): ids share ``m`` rows chosen by one hash function."""

from __future__ import annotations

import torch
from torch import Tensor

from recbench.embeddings.hashed_table import HashedTableEmbedding, HashedTableKnobs


class HashingTrickEmbedding(HashedTableEmbedding):
    """Every real id reads the row ``hash(id) % m`` of one ``m x d`` table; serving bits ``32*m*d``.

    The hashed table with ``k = 1`` (``hashed_table.py`` holds the mapping, serving form and
    budget solver): one function with seed ``hash_seed``. Padding (id 0) is not hashed.
    """

    knob_type = HashedTableKnobs

    def forward(self, ids: Tensor) -> Tensor:
        # A plain gather, not the base's EmbeddingBag: the vectors are the same, but EmbeddingBag's
        # dense backward sums the gradients of repeated ids in another order (the last bits
        # differ), so the gather keeps every hashing-trick result as it was.
        return self._zero_padding(ids, self._lookup(self.mapping[ids, 0], self.weight))

    def full_table(self) -> Tensor:
        rows = self.weight[self.mapping[1:, 0]]
        return torch.cat([rows.new_zeros(1, self.embedding_dim), rows])
