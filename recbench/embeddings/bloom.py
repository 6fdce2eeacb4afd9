"""Bloom embeddings (Serrà & Karatzoglou, RecSys 2017): ``k`` hash functions, vectors averaged."""

from __future__ import annotations

from dataclasses import dataclass

from recbench.embeddings.hashed_table import HashedTableEmbedding, HashedTableKnobs
from recbench.errors import ConfigError


@dataclass(frozen=True)
class BloomKnobs(HashedTableKnobs):
    """The hashing trick's knobs plus ``num_hashes`` (k)."""

    num_hashes: int = 2

    def hash_count(self) -> int:
        return int(self.num_hashes)

    def validate(self, embedding_dim: int) -> None:
        k = self.num_hashes
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ConfigError(f"method.num_hashes={k} must be an integer >= 1, e.g. 2")
        super().validate(embedding_dim)


class BloomEmbedding(HashedTableEmbedding):
    """Each real id reads ``k`` rows of one ``m x d`` table and returns their AVERAGE.

    The ``k`` hash functions are one family with seeds ``hash_seed * k, hash_seed * k + 1, ...,
    hash_seed * k + k - 1`` (as in the PyTorch port of Bloom embeddings that hashes "with a different
    seed" per function): consecutive ``hash_seed`` values (the YAML default follows the run seed)
    share no function, and ``hash_seed = 0`` gives seeds ``0 .. k - 1``. Two functions may pick the
    same bucket for an id; that row then counts twice in the mean (a plain average over the ``k``
    lookups). Averaging rather than summing keeps the output scale independent of ``k``. The table,
    mapping, serving form and budget solver are the hashed table's (``hashed_table.py``); with
    ``k = 1`` this is the hashing trick. Serving bits ``32*m*d``.
    """

    knob_type = BloomKnobs
