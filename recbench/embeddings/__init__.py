"""Embedding layers usable in any PyTorch model: ``from recbench.embeddings import FullEmbedding``."""

from recbench.embeddings.base import CompressedEmbedding, EmbeddingFactory, embedding_layers
from recbench.embeddings.full import FullEmbedding

__all__ = ["CompressedEmbedding", "EmbeddingFactory", "FullEmbedding", "embedding_layers"]

# Quantization methods (scalar quantization, DPQ, MGQE).
from recbench.embeddings.dpq import DPQEmbedding  # noqa: E402
from recbench.embeddings.mgqe import MGQEmbedding  # noqa: E402
from recbench.embeddings.scalar_quant import ScalarQuantEmbedding  # noqa: E402

__all__ += ["DPQEmbedding", "MGQEmbedding", "ScalarQuantEmbedding"]

# Hashing, factorisation and mixed-dimension methods.
from recbench.embeddings.bloom import BloomEmbedding  # noqa: E402
from recbench.embeddings.hashing_trick import HashingTrickEmbedding  # noqa: E402
from recbench.embeddings.low_rank import LowRankEmbedding  # noqa: E402
from recbench.embeddings.mixed_dim import MixedDimEmbedding  # noqa: E402
from recbench.embeddings.qr import QuotientRemainderEmbedding  # noqa: E402

__all__ += [
    "BloomEmbedding",
    "HashingTrickEmbedding",
    "LowRankEmbedding",
    "MixedDimEmbedding",
    "QuotientRemainderEmbedding",
]

# Dynamic and learned compression (CCE, PEP, learned low precision).
from recbench.embeddings.cce import CCEmbedding  # noqa: E402
from recbench.embeddings.learned_quant import LearnedQuantEmbedding  # noqa: E402
from recbench.embeddings.pep import PEPEmbedding  # noqa: E402

__all__ += ["CCEmbedding", "LearnedQuantEmbedding", "PEPEmbedding"]

# Tensor-train, deep-hash and random-offset-block methods (issue 16).
from recbench.embeddings.dhe import DHEmbedding  # noqa: E402
from recbench.embeddings.robe import ROBEmbedding  # noqa: E402
from recbench.embeddings.tt_rec import TTRecEmbedding  # noqa: E402

__all__ += ["DHEmbedding", "ROBEmbedding", "TTRecEmbedding"]
