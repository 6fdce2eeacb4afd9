"""NeuMF: the two branches by hand, score/score_all consistency (chunked too), gradients into all four
embedding layers, size accounting, knob errors and every method of conf/method/ plugged in."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from recbench.embeddings.base import embedding_layers
from recbench.embeddings.full import FullEmbedding
from recbench.errors import ConfigError
from recbench.models.neumf import NeuMF
from recbench.size import model_size
from tests.conftest import method_names
from tests.models.helpers import build_with_method, tiny_info

USERS, ITEMS, DIM = 12, 30, 8


def make_model(**knobs) -> NeuMF:
    defaults = dict(embedding_dim=DIM, mlp_layers=[16, 8, 4])
    factory = functools.partial(FullEmbedding, init_std=0.3)
    return NeuMF(tiny_info(USERS, ITEMS), factory, **{**defaults, **knobs}).eval()


def by_hand(model: NeuMF, user: int, item: int) -> torch.Tensor:
    """The NCF formula with an explicit concatenation and Linear layers."""
    u, i = torch.tensor(user), torch.tensor(item)
    gmf = model.gmf_user_embedding(u) * model.gmf_item_embedding(i)
    x = torch.cat([model.mlp_user_embedding(u), model.mlp_item_embedding(i)])
    first_w = torch.cat([model.mlp_user_in.weight, model.mlp_item_in.weight], 1)
    h = F.relu(first_w @ x + model.mlp_item_in.bias)
    for layer in model.tower:
        h = F.relu(layer(h))
    return model.output(torch.cat([gmf, h])).squeeze(-1)


def test_score_matches_the_ncf_formula() -> None:
    model = make_model()
    users = torch.tensor([1, 5, 12])
    items = torch.tensor([[1, 30, 7], [2, 3, 4], [9, 9, 1]])
    scores = model.score(users, items)
    assert scores.shape == (3, 3)
    for r in range(3):
        for c in range(3):
            expected = by_hand(model, int(users[r]), int(items[r, c]))
            torch.testing.assert_close(scores[r, c], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1 << 22, 100])
def test_score_all_agrees_with_score(chunk: int) -> None:
    model = make_model(score_chunk=chunk)
    users = torch.arange(1, USERS + 1)
    all_scores = model.score_all(users)
    assert all_scores.shape == (USERS, ITEMS + 1)
    items = torch.randint(1, ITEMS + 1, (USERS, 7))
    torch.testing.assert_close(
        all_scores.gather(1, items), model.score(users, items), rtol=1e-5, atol=1e-5
    )
    # 1-D items (one per user) score like a column
    torch.testing.assert_close(
        model.score(users, items[:, 0]), all_scores.gather(1, items[:, :1]).squeeze(1)
    )


def test_gradients_reach_all_four_embedding_layers() -> None:
    model = make_model(dropout=0.1).train()
    users = torch.arange(1, USERS + 1)
    items = torch.randint(1, ITEMS + 1, (USERS, 5))
    model.score(users, items).sum().backward()
    layers = embedding_layers(model)
    assert set(layers) == {
        "gmf_user_embedding",
        "gmf_item_embedding",
        "mlp_user_embedding",
        "mlp_item_embedding",
    }
    for name, layer in layers.items():
        grad = layer.weight_table.weight.grad
        assert grad is not None and grad[1:].abs().sum() > 0, name
        assert torch.all(grad[0] == 0), name


def test_size_counts_every_embedding_layer_and_the_tower() -> None:
    model = make_model()
    size = model_size(model)
    assert size.embedding_bits == 2 * 32 * USERS * DIM + 2 * 32 * ITEMS * DIM
    tower = (DIM * 16 + DIM * 16 + 16) + (16 * 8 + 8) + (8 * 4 + 4) + (DIM + 4 + 1)
    assert size.other_bits == 32 * tower
    assert size.fraction_of_full == pytest.approx(1.0)


def test_default_tower_is_a_three_layer_pyramid() -> None:
    model = NeuMF(tiny_info(USERS, ITEMS), FullEmbedding, embedding_dim=64)
    assert model.mlp_layers == [128, 64, 32]


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"mlp_layers": []}, "model.mlp_layers is empty"),
        ({"mlp_layers": [8, 0]}, "must be positive"),
        ({"dropout": -0.1}, "model.dropout=-0.1"),
    ],
)
def test_bad_knobs_fail_with_one_line(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        make_model(**knobs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", method_names())
def test_every_method_plugs_into_neumf(method: str) -> None:
    """Composition: model=neumf with every conf/method/ option trains a step and scores."""
    model = build_with_method("neumf", method, num_users=40, num_items=300)
    assert len(embedding_layers(model)) == 4
    model.train()
    users = torch.randint(1, 41, (6,))
    items = torch.randint(1, 301, (6, 5))
    (F.softplus(model.score(users, items)).mean() + model.aux_loss()).backward()
    model.eval()
    with torch.no_grad():
        all_scores = model.score_all(users)
        assert all_scores.shape == (6, 301)
        torch.testing.assert_close(
            all_scores.gather(1, items), model.score(users, items), rtol=1e-4, atol=1e-4
        )
