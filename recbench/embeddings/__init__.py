"""Embedding layers usable in any PyTorch model: ``from recbench.embeddings import FullEmbedding``."""

from recbench.embeddings.base import CompressedEmbedding, EmbeddingFactory, embedding_layers
from recbench.embeddings.full import FullEmbedding

__all__ = ["CompressedEmbedding", "EmbeddingFactory", "FullEmbedding", "embedding_layers"]
