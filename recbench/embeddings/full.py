"""Full (uncompressed) embedding: one float32 row per id, the baseline every method is compared to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding
from recbench.errors import ConfigError


class FullEmbedding(CompressedEmbedding):
    """A plain ``n x d`` float32 table; serving size ``32 * n * d`` bits.

    Initialised from N(0, init_std^2) as in the MGQE paper (std 0.01); the padding row stays zero and
    receives no gradient.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        init_std: float = 0.01,
        sparse: bool = False,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts)
        self.check_knobs(embedding_dim, init_std=init_std)
        self.init_std = float(init_std)
        self.weight_table = nn.Embedding(
            self.num_embeddings, self.embedding_dim, padding_idx=0, sparse=sparse
        )
        nn.init.normal_(self.weight_table.weight, std=self.init_std)
        with torch.no_grad():
            self.weight_table.weight[0].zero_()

    @classmethod
    def check_knobs(cls, embedding_dim: int, **knobs: Any) -> None:
        if knobs.get("init_std", 0.01) <= 0:
            raise ConfigError(f"method.init_std={knobs['init_std']} must be > 0, e.g. 0.01")

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight_table(ids)

    def full_table(self) -> Tensor:
        return self.weight_table.weight

    def serving_bits(self) -> int:
        return 32 * self.num_ids * self.embedding_dim

    def knobs(self) -> dict[str, Any]:
        return {"init_std": self.init_std}

    def serving_tensors(self) -> dict[str, Tensor]:
        return {"table": self.weight_table.weight[1:].detach().float().cpu().contiguous()}

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        table = tensors["table"].float()
        return torch.cat([table.new_zeros(1, table.shape[1]), table])
