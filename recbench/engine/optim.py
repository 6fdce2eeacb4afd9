"""The loop's optimizers: Adam, or SparseAdam for sparse embedding tables plus Adam for the rest."""

from __future__ import annotations

import torch

from recbench.errors import ConfigError


class Optimizers:
    """Several optimizers stepped together: SparseAdam for sparse embedding tables, Adam for the
    rest (``train.sparse=true``); a single Adam otherwise."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def forget(self, params: list[torch.nn.Parameter]) -> None:
        """Drop the state (e.g. Adam moments) of ``params``, whose values a layer replaced; the
        optimizer re-initialises it at their next step."""
        for opt in self.optimizers:
            for param in params:
                opt.state.pop(param, None)


def sparse_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Switch the model's embedding tables to sparse gradients and return them: each compressed
    layer says which of its tables are row-gathered (``enable_sparse_gradients``); positional
    tables, projections, centroids and MLPs stay dense."""
    from recbench.embeddings.base import embedding_layers

    return [
        t for layer in embedding_layers(model).values() for t in layer.enable_sparse_gradients(True)
    ]


def no_decay_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters every compressed layer exempts from weight decay (``no_weight_decay``)."""
    from recbench.embeddings.base import embedding_layers

    return [p for layer in embedding_layers(model).values() for p in layer.no_weight_decay()]


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, sparse: bool = False
) -> Optimizers:
    """Adam over every trainable parameter (``weight_decay`` on all but those a compressed layer
    exempts, see ``no_weight_decay``); with ``sparse``, embedding tables get sparse gradients
    and SparseAdam (which updates only the rows a batch touched: the per-step cost no longer grows
    with the vocabulary), everything else dense Adam."""
    sparse_params: list[torch.nn.Parameter] = []
    if sparse:
        if weight_decay:
            raise ConfigError(
                f"train.weight_decay={weight_decay} cannot be combined with train.sparse=true "
                "(SparseAdam has no weight decay); set train.weight_decay=0 or train.sparse=false"
            )
        sparse_params = sparse_tables(model)
    chosen = {id(p) for p in sparse_params}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    exempt = {id(p) for p in no_decay_parameters(model)}
    groups = [
        {"params": [p for p in dense if id(p) not in exempt], "weight_decay": weight_decay},
        {"params": [p for p in dense if id(p) in exempt], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    optimizers: list[torch.optim.Optimizer] = []
    if groups:
        optimizers.append(torch.optim.Adam(groups, lr=lr))
    if sparse_params:
        optimizers.append(torch.optim.SparseAdam(sparse_params, lr=lr))
    return Optimizers(optimizers)
