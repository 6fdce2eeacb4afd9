"""Serving-size accounting for a whole model (docs/DESIGN.md, "Serving size").

Serving bits = sum over embedding layers of ``serving_bits()`` + 32 bits per other parameter
(biases, MLPs, attention, ...). Training-only tensors live inside the embedding layers (e.g. DPQ's
query table) and are therefore never counted. The reference is the same backbone with every
embedding layer stored as a full float32 table of the same shape: ``32 * n * d`` per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from recbench.embeddings.base import embedding_layers


@dataclass(frozen=True)
class ModelSize:
    """Serving size of one model, in bits, and its fraction of the full-embedding reference."""

    serving_bits: int
    full_bits: int
    embedding_bits: int
    other_bits: int
    layers: dict[str, int]

    @property
    def fraction_of_full(self) -> float:
        return self.serving_bits / self.full_bits

    def as_metrics(self) -> dict[str, float]:
        out = {
            "size/serving_bits": float(self.serving_bits),
            "size/full_bits": float(self.full_bits),
            "size/embedding_bits": float(self.embedding_bits),
            "size/other_bits": float(self.other_bits),
            "size/fraction_of_full": self.fraction_of_full,
        }
        out.update({f"size/layer/{name}": float(bits) for name, bits in self.layers.items()})
        return out


def other_parameter_count(model: nn.Module) -> int:
    """Parameters outside every embedding layer (each is stored as one float32)."""
    inside = {
        id(p) for layer in embedding_layers(model).values() for p in layer.parameters()
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in inside)


def model_size(model: nn.Module) -> ModelSize:
    """Exact serving size of ``model`` and of its full-float32-embedding reference."""
    layers = embedding_layers(model)
    per_layer = {name: int(layer.serving_bits()) for name, layer in layers.items()}
    full_layers = sum(32 * layer.num_ids * layer.embedding_dim for layer in layers.values())
    other = 32 * other_parameter_count(model)
    embedding = sum(per_layer.values())
    return ModelSize(
        serving_bits=embedding + other,
        full_bits=full_layers + other,
        embedding_bits=embedding,
        other_bits=other,
        layers=per_layer,
    )
