"""Training loop pieces: negative sampling, losses by hand, early stopping and best-weight restore."""

from __future__ import annotations

import functools
import math
import shutil

import numpy as np
import pytest
import torch

from recbench.data.interactions import Interactions
from recbench.data.prepared import prepare
from recbench.embeddings.full import FullEmbedding
from recbench.engine.contracts import Batch
from recbench.engine.loop import FitOptions, fit
from recbench.engine.losses import check_loss
from recbench.engine.losses.ranking import bce_loss, bpr_loss
from recbench.engine.losses.rating import mse_loss
from recbench.engine.samplers.negatives import NegativeSampler
from recbench.engine.samplers.pairs import PairSampler
from recbench.errors import ConfigError
from recbench.models.base import DataInfo
from recbench.models.gmf import GMF


def test_negatives_never_hit_training_items() -> None:
    users = torch.tensor([1, 1, 1, 2])
    items = torch.tensor([1, 2, 3, 1])
    sampler = NegativeSampler(users, items, num_items=5, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    neg = sampler.sample(torch.tensor([1] * 200 + [2] * 200), 4, g)
    assert neg.shape == (400, 4)
    assert set(neg[:200].flatten().tolist()) == {4, 5}
    assert set(neg[200:].flatten().tolist()) == {2, 3, 4, 5}


def reference_negatives(users, items, num_items, batch_users, k, seed):  # noqa: ANN001, ANN201
    """Plain rejection sampling: redraw every seen pair, re-testing the whole batch each round."""
    seen = set(zip(users.tolist(), items.tolist()))
    g = torch.Generator().manual_seed(seed)
    u = batch_users.unsqueeze(-1).expand(-1, k)
    neg = torch.randint(1, num_items + 1, u.shape, generator=g)
    while True:
        bad = torch.tensor(
            [(a, b) in seen for a, b in zip(u.flatten().tolist(), neg.flatten().tolist())]
        )
        bad = bad.view(u.shape)
        if not bad.any():
            return neg
        neg[bad] = torch.randint(1, num_items + 1, (int(bad.sum()),), generator=g)


@pytest.mark.parametrize("bitmap", [True, False])
def test_negative_draws_equal_plain_rejection_sampling(
    bitmap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both lookups (dense bitmap, sorted keys) and re-testing only redrawn pairs give exactly the
    draws of plain rejection sampling from the same generator."""
    if not bitmap:
        monkeypatch.setattr(NegativeSampler, "BITMAP_LIMIT", 0)
    g = torch.Generator().manual_seed(5)
    users = torch.randint(1, 30, (400,), generator=g)
    items = torch.randint(1, 12, (400,), generator=g)  # dense: many redraws
    keep = torch.bincount(users, minlength=30)[users] < 11
    users, items = users[keep], items[keep]
    sampler = NegativeSampler(users, items, num_items=12, device=torch.device("cpu"))
    assert (sampler.bitmap is not None) == bitmap and (sampler.keys is None) == bitmap
    batch_users = users[torch.randperm(len(users), generator=g)[:150]]
    got = sampler.sample(batch_users, 4, torch.Generator().manual_seed(9))
    assert torch.equal(got, reference_negatives(users, items, 12, batch_users, 4, 9))


class Fixed(torch.nn.Module):
    """score(context, items) = items as floats / 10."""

    def score(self, context: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return items.float() / 10


def test_bce_by_hand() -> None:
    batch = Batch(context=torch.tensor([1]), items=torch.tensor([[10, 0, 20]]))
    expected = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.0)) + math.log1p(math.exp(2.0))
    assert bce_loss(Fixed(), batch).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_by_hand() -> None:
    batch = Batch(context=torch.tensor([1]), items=torch.tensor([[10, 0, 20]]))
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert bpr_loss(Fixed(), batch).item() == pytest.approx(expected, rel=1e-6)


def test_mse_by_hand() -> None:
    batch = Batch(
        context=torch.tensor([1, 1]), items=torch.tensor([30, 40]), target=torch.tensor([3.0, 5.0])
    )
    assert mse_loss(Fixed(), batch).item() == pytest.approx((0 + 1) / 2)


def test_masked_positions_do_not_count() -> None:
    batch = Batch(
        context=torch.tensor([1]),
        items=torch.tensor([[[10, 0], [0, 50]]]),
        mask=torch.tensor([[True, False]]),
    )
    expected = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.0))
    assert bce_loss(Fixed(), batch).item() == pytest.approx(expected, rel=1e-6)


def test_loss_must_fit_task() -> None:
    with pytest.raises(ConfigError, match="does not fit task=rating"):
        check_loss("rating", "bce")
    with pytest.raises(ConfigError, match="unknown"):
        check_loss("ranking", "hinge")


def small_ranking_data():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(60), 8)
    items = np.concatenate([rng.choice(40, 8, replace=False) for _ in range(60)])
    inter = Interactions(user=users, item=items, timestamp=np.arange(len(users)), name="t")
    return prepare(inter, "ranking", seed=0)


def test_early_stopping_restores_best_weights() -> None:
    data = small_ranking_data()
    torch.manual_seed(0)
    model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
    sampler = PairSampler(data, 2, 64, torch.device("cpu"))
    values = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    snapshots: list[dict] = []

    def validate() -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"ndcg_at_10": next(values)}

    options = FitOptions(
        loss="bce", epochs=6, lr=0.05, patience=2, monitor="ndcg_at_10", progress=False
    )
    result = fit(model, sampler, options, validate=validate)
    assert result.best_epoch == 2 and result.epochs_run == 4 and result.stopped_early
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key])


def test_min_epochs_keeps_training_through_a_plateau() -> None:
    """Patience alone would stop at epoch 3; min_epochs=5 lets the late gain at epoch 5 count."""
    data = small_ranking_data()
    torch.manual_seed(0)
    model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
    sampler = PairSampler(data, 2, 64, torch.device("cpu"))
    values = iter([0.3, 0.3, 0.3, 0.3, 0.6, 0.5, 0.5, 0.5])

    def validate() -> dict[str, float]:
        return {"ndcg_at_10": next(values)}

    options = FitOptions(loss="bce", epochs=8, lr=0.05, patience=2, min_epochs=5, monitor="ndcg_at_10",
                         progress=False)  # fmt: skip
    result = fit(model, sampler, options, validate=validate)
    assert result.best_epoch == 5 and result.epochs_run == 7 and result.stopped_early


def test_training_is_seeded() -> None:
    data = small_ranking_data()

    def train_once() -> torch.Tensor:
        torch.manual_seed(0)
        model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
        options = FitOptions(loss="bce", epochs=2, lr=0.05, seed=3, progress=False)
        fit(model, PairSampler(data, 2, 64, torch.device("cpu")), options)
        return model.item_embedding.full_table().detach()

    torch.testing.assert_close(train_once(), train_once())


def test_full_embedding_gmf_beats_popularity_on_structured_data() -> None:
    from recbench.engine.evaluators.full import RankingEvaluator

    rng = np.random.default_rng(1)
    n_users, n_items = 300, 120
    groups_u = rng.integers(0, 6, n_users)
    groups_i = np.arange(n_items) % 6
    users, items = [], []
    for u in range(n_users):
        pool = np.flatnonzero(groups_i == groups_u[u])
        users += [u] * 10
        items += rng.choice(pool, 10, replace=False).tolist()
    inter = Interactions(
        user=np.array(users), item=np.array(items), timestamp=np.arange(len(users)), name="groups"
    )
    data = prepare(inter, "ranking", seed=0)
    torch.manual_seed(0)
    model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=16)
    options = FitOptions(loss="bce", epochs=15, lr=0.01, progress=False)
    fit(model, PairSampler(data, 4, 128, torch.device("cpu")), options)
    ev = RankingEvaluator(data, k=10)
    learned = ev.evaluate(model, "test")["hr_at_10"]
    popular = ev.popularity(data.item_counts, "test")["hr_at_10"]
    assert learned > 0.4 and learned > 2 * popular


def test_sparse_training_touches_only_sampled_rows_and_learns() -> None:
    from recbench.engine.optim import make_optimizer, sparse_tables

    data = small_ranking_data()
    torch.manual_seed(0)
    model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0, sparse=True)
    assert [type(o).__name__ for o in optimizer.optimizers] == ["Adam", "SparseAdam"]
    assert model.item_embedding.weight_table.sparse and model.user_embedding.weight_table.sparse
    assert len(sparse_tables(model)) == 2
    before = model.item_embedding.full_table().detach().clone()
    batch = Batch(context=torch.tensor([1, 2]), items=torch.tensor([[3, 4], [3, 5]]))
    optimizer.zero_grad()
    bce_loss(model, batch).backward()
    assert model.item_embedding.weight_table.weight.grad.is_sparse
    optimizer.step()
    after = model.item_embedding.full_table().detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 4, 5]  # SparseAdam moves only the rows the batch looked up

    torch.manual_seed(0)
    model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
    options = FitOptions(loss="bce", epochs=4, lr=0.05, progress=False, sparse=True)
    result = fit(model, PairSampler(data, 2, 64, torch.device("cpu")), options)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


def test_sparse_refuses_weight_decay() -> None:
    from recbench.engine.optim import make_optimizer

    data = small_ranking_data()
    model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
    with pytest.raises(ConfigError, match="train.weight_decay=0.1 cannot be combined"):
        make_optimizer(model, lr=0.01, weight_decay=0.1, sparse=True)


@pytest.mark.parametrize(
    "method", ["hashing", "bloom", "qr", "low_rank", "dpq", "scalar_quant", "cce"]
)
def test_sparse_gradients_equal_dense_gradients(method: str) -> None:
    """``train.sparse`` changes how gradients are stored, never their values: for every method with
    gathered tables the sparse gradient, densified, equals the dense one, and only the gathered
    tables become sparse. (SparseAdam then differs from Adam only where it adds eps.)"""
    from hydra.utils import instantiate

    from recbench.engine.optim import make_optimizer, sparse_tables
    from tests.conftest import method_node

    data = small_ranking_data()
    node = method_node(method)
    node.pop("budget", None)
    factory = instantiate(node)
    batch = Batch(context=torch.tensor([1, 2, 3]), items=torch.tensor([[3, 4], [3, 5], [1, 2]]))
    grads = []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = GMF(DataInfo.from_prepared(data), factory, embedding_dim=64)
        make_optimizer(model, lr=0.01, weight_decay=0.0, sparse=sparse)
        model.train()
        (bce_loss(model, batch) + model.aux_loss()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    sparse_names = {n for n, g in grads[1].items() if g.is_sparse}
    assert sparse_names, "no table became sparse"
    torch.manual_seed(0)
    tables = sparse_tables(GMF(DataInfo.from_prepared(data), factory, embedding_dim=64))
    assert len(sparse_names) == len(tables)
    for name, dense in grads[0].items():
        got = grads[1][name].to_dense() if grads[1][name].is_sparse else grads[1][name]
        torch.testing.assert_close(got, dense, atol=1e-9, rtol=1e-6)


def test_ce_loss_ignores_padded_positions() -> None:
    """Full softmax over items with left-padded sequence positions (target 0) stays finite and
    equals the mean over the real positions only."""
    from recbench.engine.losses.ranking import ce_loss

    class Logits(torch.nn.Module):
        def full_logits(self, context: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[[0.0, 1.0, 2.0, 3.0], [0.0, 3.0, 1.0, 0.0]]])

    batch = Batch(context=torch.zeros(1, 2, dtype=torch.long), items=torch.tensor([[[0], [1]]]),
                  mask=torch.tensor([[False, True]]))  # fmt: skip
    expected = -math.log(math.exp(3) / (math.exp(3) + math.exp(1) + math.exp(0)))
    assert ce_loss(Logits(), batch).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)
def test_compiled_loss_trains_like_the_eager_one() -> None:
    """train.compile=true changes how the step runs, not what it computes (slow: compiling
    takes tens of seconds on CPU)."""
    data = small_ranking_data()

    def train_once(compile_loss: bool) -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        model = GMF(DataInfo.from_prepared(data), functools.partial(FullEmbedding), embedding_dim=8)
        options = FitOptions(
            loss="bce", epochs=3, lr=0.05, seed=3, progress=False, compile=compile_loss
        )
        result = fit(model, PairSampler(data, 2, 64, torch.device("cpu")), options)
        return [
            row["train/loss"] for row in result.history
        ], model.item_embedding.full_table().detach()

    eager_losses, eager_table = train_once(False)
    compiled_losses, compiled_table = train_once(True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager_losses[-1] < eager_losses[0]  # it trained
    torch.testing.assert_close(compiled_table, eager_table, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "sampler_cls", "ranking"),
    [
        (["model=gmf"], "PairSampler", True),
        (["model=gmf", "eval.protocol=sampled"], "PairSampler", True),
        (["model=gmf", "train.loss=sampled_softmax"], "PairSampler", True),
        (["model=sasrec"], "SequenceSampler", True),
        (["model=dot_bias"], "RatingSampler", False),
    ],
)
def test_every_task_gives_a_sampler_and_an_evaluator_of_the_contracts(
    overrides: list[str], sampler_cls: str, ranking: bool, tmp_path
) -> None:
    """The loop and the entry point see samplers and evaluators only through the protocols of
    ``recbench.engine.contracts``: every task's pair satisfies them, the ranking protocols (full
    and sampled) also ``RankingEvaluation``, and a sampler's batches are ``Batch``es."""
    from hydra import compose, initialize_config_dir

    from recbench.assembly import load_data
    from recbench.engine.contracts import Evaluator, RankingEvaluation, Sampler
    from recbench.tasks import build_task
    from tests.conftest import CONF

    tiny = [
        "dataset.loader.num_users=40",
        "dataset.loader.num_items=30",
        "dataset.loader.events_per_user=8",
        f"eval.negatives_dir={tmp_path}",
        "eval.num_sampled=5",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*tiny, *overrides])
    parts = build_task(load_data(cfg), cfg, torch.device("cpu"))
    assert type(parts.sampler).__name__ == sampler_cls
    assert isinstance(parts.sampler, Sampler) and isinstance(parts.evaluator, Evaluator)
    assert isinstance(parts.evaluator, RankingEvaluation) == ranking
    batch = next(iter(parts.sampler.epoch(torch.Generator().manual_seed(0))))
    assert isinstance(batch, Batch) and len(parts.sampler) >= 1
