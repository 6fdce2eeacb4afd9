"""Full (uncompressed) embedding: one float32 row per id, the baseline every method is compared to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recbench.embeddings.base import CompressedEmbedding, Knobs
from recbench.errors import ConfigError


@dataclass(frozen=True)
class FullKnobs(Knobs):
    init_std: float = 0.01  # std of the N(0, std^2) initialisation (MGQE paper: 0.01)

    def validate(self, embedding_dim: int) -> None:
        if self.init_std <= 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0, e.g. 0.01")


def padded_table(num_embeddings: int, embedding_dim: int, init_std: float) -> nn.Embedding:
    """An ``nn.Embedding`` with rows ``N(0, init_std^2)`` and a zero padding row 0 that gets no
    gradient: the float table of full embeddings and of methods that train one (scalar quant)."""
    table = nn.Embedding(num_embeddings, embedding_dim, padding_idx=0)
    nn.init.normal_(table.weight, std=init_std)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class FullEmbedding(CompressedEmbedding):
    """A plain ``n x d`` float32 table; serving size ``32 * n * d`` bits.

    Initialised from N(0, init_std^2) as in the MGQE paper (std 0.01); the padding row stays zero and
    receives no gradient.
    """

    knob_type = FullKnobs

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor | None = None,
        **knobs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, counts=counts, **knobs)
        self.weight_table = padded_table(self.num_embeddings, self.embedding_dim, self.init_std)

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight_table(ids)

    def full_table(self) -> Tensor:
        return self.weight_table.weight

    def serving_bits(self) -> int:
        return 32 * self.num_ids * self.embedding_dim

    def serving_tensors(self) -> dict[str, Tensor]:
        return {"table": self.weight_table.weight[1:].detach().float().cpu().contiguous()}

    @classmethod
    def table_from_serving(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
        table = tensors["table"].float()
        return torch.cat([table.new_zeros(1, table.shape[1]), table])
