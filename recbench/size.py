"""Serving-size accounting for a whole model (docs/design.md, "Serving size").

Serving bits = sum over embedding layers of ``serving_bits()`` + 32 bits per other parameter
(biases, MLPs, attention, ...). Training-only tensors live inside the embedding layers (e.g. DPQ's
query table) and are therefore never counted.

The reference ("Model Size %" = serving bits / reference bits) is the same backbone rebuilt with
full float32 embeddings at a fixed *reference dimension* (``eval.reference_dim``, default 64, the
backbone papers' d; ``reference_bits``), so a model of d = 16 is 25 % of the d = 64 full model rather
than "100 %". Rebuilding (not a formula) also counts what grows with d outside the tables (NeuMF's
MLP input and output layers, SASRec's attention blocks and positional table). ``model_size`` without
a reference falls back to the same backbone with full tables of the model's own shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from recbench.embeddings.base import embedding_layers
from recbench.errors import ConfigError


@dataclass(frozen=True)
class ModelSize:
    """Serving size of one model, in bits, and its fraction of the full-embedding reference
    (``full_bits``: the full model at ``reference_dim``, or of the model's own shapes when None)."""

    serving_bits: int
    full_bits: int
    embedding_bits: int
    other_bits: int
    layers: dict[str, int]
    reference_dim: int | None = None

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
        if self.reference_dim is not None:
            out["size/reference_dim"] = float(self.reference_dim)
        out.update({f"size/layer/{name}": float(bits) for name, bits in self.layers.items()})
        return out


def other_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters outside every embedding layer, by state-dict name: each value is served as one
    float32 (``model_size`` counts them, the serving artifact stores them)."""
    inside = {id(p) for layer in embedding_layers(model).values() for p in layer.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) not in inside}


def model_size(
    model: nn.Module, reference_bits: int | None = None, reference_dim: int | None = None
) -> ModelSize:
    """Exact serving size of ``model`` and its fraction of ``reference_bits`` (from
    ``reference_bits(...)`` at ``reference_dim``); without one, of the same backbone with full
    float32 tables of the model's own shapes."""
    layers = embedding_layers(model)
    per_layer = {name: int(layer.serving_bits()) for name, layer in layers.items()}
    full_layers = sum(32 * layer.num_ids * layer.embedding_dim for layer in layers.values())
    other = 32 * sum(p.numel() for p in other_parameters(model).values())
    embedding = sum(per_layer.values())
    return ModelSize(
        serving_bits=embedding + other,
        full_bits=full_layers + other if reference_bits is None else int(reference_bits),
        embedding_bits=embedding,
        other_bits=other,
        layers=per_layer,
        reference_dim=None if reference_bits is None else reference_dim,
    )


def reference_bits(build_backbone: Callable[..., nn.Module], info: object, dim: int) -> int:
    """Serving bits of the backbone rebuilt with full float32 embeddings of dimension ``dim``.

    ``build_backbone(info, item_embedding=..., user_embedding=..., embedding_dim=dim)`` is the
    model's partial (``cfg.model``); its other knobs stay as configured. Built on the ``meta``
    device: shapes only, no memory or initialisation cost, whatever the vocabulary.
    """
    from recbench.embeddings.full import FullEmbedding

    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise ConfigError(f"eval.reference_dim={dim} must be an integer >= 1 (default 64)")

    def full(num_embeddings: int, embedding_dim: int, counts: object = None) -> FullEmbedding:
        return FullEmbedding(num_embeddings, embedding_dim)  # counts (CPU data) are not needed

    try:
        with torch.device("meta"):
            reference = build_backbone(
                info, item_embedding=full, user_embedding=full, embedding_dim=int(dim)
            )
    except ConfigError as exc:
        raise ConfigError(
            f"eval.reference_dim={dim} does not fit this backbone ({exc}); pick a dimension the "
            "backbone accepts, e.g. its model.embedding_dim"
        ) from None
    return model_size(reference).serving_bits
