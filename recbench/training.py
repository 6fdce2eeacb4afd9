"""The one training loop, with its samplers and losses.

Samplers turn a task's training data into batches sliced from tensors built once on the device (no
per-sample Python); negatives are drawn for a whole epoch in one vectorised call. The loop adds the
embedding layers' auxiliary losses, validates after each epoch, stops early on the monitored
validation metric and restores the best weights before the caller's test evaluation.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recbench.data.prepared import PreparedData
from recbench.errors import ConfigError, DataError
from recbench.evaluation import is_improvement
from recbench.models.base import Recommender
from recbench.sampled_softmax import SharedNegatives, sampled_softmax_loss

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"train.device={name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


@dataclass
class Batch:
    """One training step's input. ``items[..., 0]`` is the positive, ``items[..., 1:]`` negatives
    (ranking/sequential); for rating batches ``items`` are the rated items and ``target`` ratings.
    ``mask`` marks the positions that count (sequential padding), or None. ``candidates``: the
    ``(S,)`` negatives shared by every position (``train.loss=sampled_softmax``) and ``log_q`` the
    log sampling probability of every id, or None."""

    context: Tensor
    items: Tensor
    target: Tensor | None = None
    mask: Tensor | None = None
    candidates: Tensor | None = None
    log_q: Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Scored (context, item) pairs in this batch, positives and negatives alike."""
        per = self.items.shape[-1] + (0 if self.candidates is None else self.candidates.numel())
        n = self.items.numel() // max(self.items.shape[-1], 1) if self.mask is None else int(self.mask.sum())
        return n * per


class NegativeSampler:
    """Uniform negatives over the items a user has *not* interacted with in training.

    Vectorised rejection sampling: draw uniformly from 1..n, test every (user, item) pair at once,
    and redraw only the hits, testing only the redrawn ones in later rounds. The test is a lookup
    in a dense users x items bitmap when that fits in ``BITMAP_LIMIT`` bytes (MovieLens scale: one
    gather), else a ``searchsorted`` in the sorted array of training keys (large vocabularies).
    """

    #: Largest dense bitmap of seen (user, item) pairs, in bytes (one byte per pair).
    BITMAP_LIMIT = 1 << 26

    def __init__(self, users: Tensor, items: Tensor, num_items: int, device: torch.device) -> None:
        self.num_items = num_items
        self.device = device
        users, items = users.to(torch.int64), items.to(torch.int64)
        # distinct items per user: a repeated (user, item) event does not use up a negative
        distinct = torch.unique(users * (num_items + 1) + items)
        per_user = torch.bincount(distinct // (num_items + 1))
        if per_user.numel() and int(per_user.max()) >= num_items:
            raise DataError(
                "a user interacted with every item, so no negative can be sampled; "
                "filter such users (dataset.min_item_count / k-core) or use a larger catalogue"
            )
        num_users = int(users.max()) + 1 if users.numel() else 1
        self.bitmap: Tensor | None = None
        self.keys: Tensor | None = None
        if num_users * (num_items + 1) <= self.BITMAP_LIMIT:
            self.bitmap = torch.zeros(num_users, num_items + 1, dtype=torch.bool)
            self.bitmap[users, items] = True
            self.bitmap = self.bitmap.to(device)
        else:
            self.keys = torch.unique(users * (num_items + 1) + items).to(device)

    def _seen(self, users: Tensor, items: Tensor) -> Tensor:
        if self.bitmap is not None:
            return self.bitmap[users, items]
        assert self.keys is not None
        keys = users * (self.num_items + 1) + items
        pos = torch.searchsorted(self.keys, keys).clamp_(max=max(len(self.keys) - 1, 0))
        return self.keys[pos] == keys

    def sample(self, users: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """(len(users), k) negatives for each user (an element of ``users`` may repeat)."""
        users = users.to(self.device, torch.int64).unsqueeze(-1).expand(*users.shape, k)
        neg = torch.randint(
            1, self.num_items + 1, users.shape, device=self.device, generator=generator
        )
        flat_users, flat_neg = users.reshape(-1), neg.view(-1)
        todo = torch.arange(flat_neg.numel(), device=self.device)
        for _ in range(1000):
            bad = todo[self._seen(flat_users[todo], flat_neg[todo])]
            if bad.numel() == 0:
                return neg
            flat_neg[bad] = torch.randint(
                1, self.num_items + 1, (bad.numel(),), device=self.device, generator=generator
            )
            todo = bad
        raise DataError("negative sampling did not converge: users have seen almost every item")


class PairSampler:
    """Ranking task: each training (user, item) event is one example with ``num_negatives``
    sampled negatives; an epoch visits every event once in a fresh random order."""

    def __init__(
        self,
        data: PreparedData,
        num_negatives: int,
        batch_size: int,
        device: torch.device,
        shared: SharedNegatives | None = None,
    ) -> None:
        if num_negatives < 1 and shared is None:
            raise ConfigError("train.num_negatives must be >= 1 for ranking losses (NCF uses 4)")
        self.shared = shared
        self.users = torch.from_numpy(data.train.user).to(device)
        self.items = torch.from_numpy(data.train.item).to(device)
        self.k = num_negatives
        self.batch_size = batch_size
        self.device = device
        self.negatives = NegativeSampler(self.users, self.items, data.num_items, device)

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(len(self.users), device=self.device, generator=generator)
        users, pos = self.users[perm], self.items[perm]
        if self.shared is not None:  # sampled softmax: negatives shared per batch, none per pair
            items = pos.unsqueeze(1)
            drawn = self.shared.draw(len(self), generator)
        else:
            items = torch.cat([pos.unsqueeze(1), self.negatives.sample(users, self.k, generator)], 1)
        for step, start in enumerate(range(0, len(users), self.batch_size)):
            stop = start + self.batch_size
            if self.shared is not None:
                yield Batch(
                    context=users[start:stop], items=items[start:stop],
                    candidates=drawn[step], log_q=self.shared.log_q,
                )  # fmt: skip
            else:
                yield Batch(context=users[start:stop], items=items[start:stop])


class RatingSampler:
    """Rating task: each training rating is one example."""

    def __init__(self, data: PreparedData, batch_size: int, device: torch.device) -> None:
        self.users = torch.from_numpy(data.train.user).to(device)
        self.items = torch.from_numpy(data.train.item).to(device)
        self.ratings = torch.from_numpy(np.asarray(data.train.rating, dtype=np.float32)).to(device)
        self.batch_size = batch_size
        self.device = device

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(len(self.users), device=self.device, generator=generator)
        users, items, ratings = self.users[perm], self.items[perm], self.ratings[perm]
        for start in range(0, len(users), self.batch_size):
            stop = start + self.batch_size
            yield Batch(context=users[start:stop], items=items[start:stop], target=ratings[start:stop])


# --------------------------------------------------------------------------- losses
def _masked_mean(per_example: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_example.mean()
    mask = mask.to(per_example.dtype)
    return (per_example * mask).sum() / mask.sum().clamp_min(1.0)


def bce_loss(model: Recommender, batch: Batch) -> Tensor:
    """Binary cross-entropy: the positive labelled 1, each sampled negative 0 (NCF, SASRec)."""
    scores = model.score(batch.context, batch.items)
    per = F.softplus(-scores[..., 0]) + F.softplus(scores[..., 1:]).sum(-1)
    return _masked_mean(per, batch.mask)


def bpr_loss(model: Recommender, batch: Batch) -> Tensor:
    """Bayesian personalised ranking: -log sigmoid(s_pos - s_neg), averaged over negatives."""
    scores = model.score(batch.context, batch.items)
    per = -F.logsigmoid(scores[..., :1] - scores[..., 1:]).mean(-1)
    return _masked_mean(per, batch.mask)


def mse_loss(model: Recommender, batch: Batch) -> Tensor:
    """Squared error of predicted ratings."""
    if batch.target is None:
        raise ConfigError("train.loss=mse needs ratings; use it with a rating task (task=rating)")
    return F.mse_loss(model.score(batch.context, batch.items), batch.target)


def ce_loss(model: Recommender, batch: Batch) -> Tensor:
    """Full softmax cross-entropy of the positive against every item (no sampling)."""
    logits = model.full_logits(batch.context)
    logits = logits.clone()
    logits[..., 0] = float("-inf")  # padding is never a candidate
    target = batch.items[..., 0]
    # Padded positions have target 0, whose logit is -inf: ignore them (else inf * 0 = nan).
    per = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none", ignore_index=0
    )
    return _masked_mean(per.reshape(target.shape), batch.mask)


LOSSES: dict[str, Callable[[Recommender, Batch], Tensor]] = {
    "bce": bce_loss,
    "bpr": bpr_loss,
    "mse": mse_loss,
    "ce": ce_loss,
    "sampled_softmax": sampled_softmax_loss,  # recbench.sampled_softmax
}

#: Which losses make sense for which task (checked before training starts).
TASK_LOSSES = {
    "rating": ("mse",),
    "ranking": ("bce", "bpr", "ce", "sampled_softmax"),
    "sequential": ("bce", "bpr", "ce", "sampled_softmax"),
}


def check_loss(task: str, loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"train.loss={loss!r} is unknown; choose one of {', '.join(LOSSES)}")
    if loss not in TASK_LOSSES[task]:
        raise ConfigError(
            f"train.loss={loss} does not fit task={task}; use one of {', '.join(TASK_LOSSES[task])}"
        )


# --------------------------------------------------------------------------- loop
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
    """Switch the model's embedding tables to sparse gradients and return them: ``nn.Embedding``
    children of the compressed embedding layers and each layer's ``sparse_parameters()`` (hashed,
    low-rank and quotient-remainder tables). Positional tables, projections, centroids and MLPs
    stay dense."""
    from recbench.embeddings.base import embedding_layers

    tables: list[torch.nn.Parameter] = []
    for layer in embedding_layers(model).values():
        own = layer.sparse_parameters()
        if own:
            layer.sparse_grad = True
            tables.extend(own)
        for module in layer.modules():
            if isinstance(module, torch.nn.Embedding):
                module.sparse = True
                tables.append(module.weight)
    return [t for t in tables if t.requires_grad]


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, sparse: bool = False
) -> Optimizers:
    """Adam over every trainable parameter; with ``sparse``, embedding tables get sparse gradients
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
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay))
    if sparse_params:
        optimizers.append(torch.optim.SparseAdam(sparse_params, lr=lr))
    return Optimizers(optimizers)


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU.

    Why: embedding rows start at N(0, 0.01^2) and Adam's second-moment estimates of rarely touched
    rows decay into the subnormal range, where x86 arithmetic is ~100x slower. On the MovieLens-1M
    scale this made a GMF step 40x slower (0.2 s instead of 5 ms, scripts/bench_throughput.py).
    Values below 1.2e-38 are numerically irrelevant here. No effect on CUDA.
    """
    torch.set_flush_denormal(True)


def loss_function(loss: str, compile: bool = False) -> Callable[[Recommender, Batch], Tensor]:
    """The step's loss by name, under ``torch.compile`` when ``compile`` (``train.compile``)."""
    return torch.compile(LOSSES[loss]) if compile else LOSSES[loss]


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
    sampler: PairSampler | RatingSampler,
    *,
    loss: str,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    patience: int = 0,
    min_epochs: int = 0,
    monitor: str | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    seed: int = 0,
    progress: bool = True,
    sparse: bool = False,
    compile: bool = False,
) -> FitResult:
    """Train ``model`` for up to ``epochs`` epochs.

    After each epoch ``validate()`` (if given) returns validation metrics; ``monitor`` names the
    one used for early stopping (``patience`` epochs without improvement; 0 = never stop early) and
    for choosing the weights restored at the end; it never stops before epoch ``min_epochs``, because
    some models (low rank, biases plus dot product) sit on the popularity plateau for a while before
    their embeddings start to help, and patience alone would call that plateau convergence. ``compile`` runs the loss (the model's forward
    and, through AOTAutograd, its backward) under ``torch.compile``; the optimizer stays eager.
    """
    from tqdm.auto import tqdm

    from recbench.embeddings.base import embedding_layers

    loss_fn = loss_function(loss, compile)
    device = next(model.parameters()).device
    flush_denormals()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    optimizer = make_optimizer(model, lr, weight_decay, sparse)
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
        for batch in batch_progress(sampler.epoch(generator), len(sampler), epoch, epochs, progress):
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
        row = {"epoch": float(epoch), "train/loss": mean_loss}
        if validate is not None:
            row.update({f"val/{k}": v for k, v in validate().items()})
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))

        if monitor is None or validate is None:
            best_epoch = epoch
            continue
        value = row[f"val/{monitor}"]
        if is_improvement(value, best_value, monitor):
            best_value, best_epoch, bad_epochs = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix_str(f"best {monitor}={value:.4f} at epoch {epoch}")  # the log has the rest
        else:
            bad_epochs += 1
            if patience and bad_epochs >= patience and epoch >= min_epochs:
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


@functools.wraps(_train)
def fit(*args: Any, **kwargs: Any) -> FitResult:
    with progress_console(kwargs.get("progress", True)):
        return _train(*args, **kwargs)
