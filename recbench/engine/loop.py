"""The one training loop: train, validate after each epoch, stop early, restore the best weights.

The loop draws every batch from a ``contracts.Sampler`` with one seeded generator, adds the
embedding layers' auxiliary losses, calls each layer's ``on_epoch_end`` (CCE clustering, PEP
freezing), validates through a callback, stops early on the monitored validation metric and
restores the best weights before the caller's test evaluation. It knows nothing of configs,
tracking or the console beyond its progress bars: options come as one ``FitOptions``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from recbench import record
from recbench.embeddings.base import embedding_layers
from recbench.engine.contracts import Batch, Sampler
from recbench.engine.device import flush_denormals
from recbench.engine.losses import loss_function
from recbench.engine.optim import Optimizers, make_optimizer
from recbench.models.base import Recommender

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FitOptions:
    """How ``fit`` trains (the ``train.*`` keys of the config).

    ``monitor`` names the validation metric used for early stopping (``patience`` epochs without
    improvement; 0 = never stop early) and for choosing the weights restored at the end; None
    keeps the last epoch. The loop never stops before epoch ``min_epochs``, because some models
    (low rank, biases plus dot product) sit on the popularity plateau for a while before their
    embeddings start to help, and patience alone would call that plateau convergence. ``seed``
    seeds the generator of every sampler draw; ``progress`` shows bars; ``sparse`` gives embedding
    tables sparse gradients and SparseAdam; ``compile`` runs the loss (the model's forward and,
    through AOTAutograd, its backward) under ``torch.compile``; the optimizer stays eager;
    ``fused_vq`` runs DPQ/MGQE's nearest-centroid search in the compiled C loop of
    ``recbench.embeddings.vq_kernel`` (same results bit for bit, shorter CPU steps): ``True``
    requires it, ``"auto"`` uses it on CPU when a C compiler builds it, ``False`` never.
    """

    loss: str
    epochs: int
    lr: float
    weight_decay: float = 0.0
    patience: int = 0
    min_epochs: int = 0
    monitor: str | None = None
    seed: int = 0
    progress: bool = True
    sparse: bool = False
    compile: bool = False
    fused_vq: bool | str = "auto"


@dataclass
class FitResult:
    """What happened during training."""

    epochs_run: int
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    train_seconds: float
    samples: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else float("nan")


def is_improvement(new: float, best: float | None, metric: str) -> bool:
    """Whether ``new`` beats ``best`` in ``metric``'s direction (a NaN never does)."""
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if record.higher_is_better(metric) else new < best


def train_step(
    model: Recommender,
    batch: Batch,
    loss_fn: Callable[[Recommender, Batch], Tensor],
    optimizer: Optimizers,
) -> Tensor:
    """One optimisation step; returns the detached loss without a host sync (the loop sums it on
    the device and reads it once per epoch)."""
    step_loss = loss_fn(model, batch) + model.aux_loss().to(batch.items.device)
    optimizer.zero_grad(set_to_none=True)
    step_loss.backward()
    optimizer.step()
    return step_loss.detach()


#: A per-batch bar appears once an epoch has run this long (seconds): short epochs keep one line.
BATCH_BAR_DELAY = 3.0


def batch_progress(
    batches: Iterable[T], total: int, epoch: int, epochs: int, progress: bool
) -> Iterable[T]:
    """``batches`` under a per-batch bar (rate, ETA) that shows only when the epoch takes longer
    than ``BATCH_BAR_DELAY``: an hour-long epoch (SASRec with a full softmax on a large catalogue)
    shows that it is moving, while a short one stays a single epoch bar."""
    if not progress:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                delay=BATCH_BAR_DELAY, mininterval=1.0)  # fmt: skip


@contextmanager
def progress_console(progress: bool) -> Iterator[None]:
    """While bars are shown, route console log lines through ``tqdm.write`` so that a log line is
    printed above the bar instead of being glued onto it (Hydra logs to stdout, tqdm to stderr)."""
    if not progress:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


def _train(
    model: Recommender,
    sampler: Sampler,
    options: FitOptions,
    validate: Callable[[], dict[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` for up to ``options.epochs`` epochs (``FitOptions`` says what each option
    does); ``validate()`` (if given) returns the validation metrics after each epoch and
    ``on_epoch(epoch, row)`` receives each epoch's row (the loop knows nothing of tracking)."""
    from tqdm.auto import tqdm

    epochs, monitor, progress = options.epochs, options.monitor, options.progress
    loss_fn = loss_function(options.loss, options.compile)
    device = next(model.parameters()).device
    if options.fused_vq:
        from recbench.embeddings.vq import use_fused_search

        use_fused_search(model, required=options.fused_vq is True, device=device)
    flush_denormals()
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed)
    optimizer = make_optimizer(model, options.lr, options.weight_decay, options.sparse)
    best_value: float | None = None
    best_epoch = 0
    best_state: dict[str, Tensor] | None = None
    history: list[dict[str, float]] = []
    bad_epochs = 0
    samples = 0
    train_seconds = 0.0
    stopped_early = False
    epoch = 0
    bar = tqdm(range(1, epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        steps = 0
        for batch in batch_progress(
            sampler.epoch(generator), len(sampler), epoch, epochs, progress
        ):
            total += train_step(model, batch, loss_fn, optimizer)
            steps += 1
            samples += batch.num_samples
        for layer in embedding_layers(model).values():  # CCE clustering, PEP mask freezing
            optimizer.forget(layer.on_epoch_end(epoch))
        mean_loss = float(total) / max(steps, 1)  # one host sync per epoch
        train_seconds += time.perf_counter() - started
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"training loss became {mean_loss} at epoch {epoch}; lower train.lr"
            )
        row = {"epoch": float(epoch), record.TRAIN_LOSS: mean_loss}
        if validate is not None:
            row.update({record.key(record.VAL, k): v for k, v in validate().items()})
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        log.info(
            "epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
        )

        if monitor is None or validate is None:
            best_epoch = epoch
            continue
        value = row[record.key(record.VAL, monitor)]
        if is_improvement(value, best_value, monitor):
            best_value, best_epoch, bad_epochs = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix_str(
                f"best {monitor}={value:.4f} at epoch {epoch}"
            )  # the log has the rest
        else:
            bad_epochs += 1
            if options.patience and bad_epochs >= options.patience and epoch >= options.min_epochs:
                stopped_early = True
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(
        epochs_run=epoch,
        best_epoch=best_epoch,
        best_value=best_value,
        stopped_early=stopped_early,
        train_seconds=train_seconds,
        samples=samples,
        history=history,
    )


def fit(
    model: Recommender,
    sampler: Sampler,
    options: FitOptions,
    *,
    validate: Callable[[], dict[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``sampler``'s batches as ``options`` say (``_train``), with console log
    lines routed above the progress bars."""
    with progress_console(options.progress):
        return _train(model, sampler, options, validate, on_epoch)
