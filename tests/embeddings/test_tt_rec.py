"""TT-Rec: factorisations, the chain product, the reference library's parameter count, budgets."""

from __future__ import annotations

import pytest
import torch

from recbench.embeddings import TTRecEmbedding
from recbench.embeddings.tt_rec import balanced_dim_factors, balanced_row_factors, tt_full
from recbench.errors import ConfigError


def test_reference_library_parameter_count_by_hand() -> None:
    # The FBTT-Embedding README (TT-Rec's reference code): a 1,000,000 x 64 table with
    # tt_p_shapes [120, 90, 110], tt_q_shapes [4, 4, 4], tt_ranks [12, 14] has cores
    # 1x120x4x12, 12x90x4x14 and 14x110x4x1.
    layer = TTRecEmbedding(
        1_000_001, 64, n_factors=[120, 90, 110], d_factors=[4, 4, 4], tt_rank=[12, 14]
    )
    cores = 1 * 120 * 4 * 12 + 12 * 90 * 4 * 14 + 14 * 110 * 4 * 1
    assert cores == 5_760 + 60_480 + 6_160 == 72_400
    assert layer.serving_bits() == 32 * 72_400
    assert [tuple(c.shape) for c in layer.cores] == [
        (120, 1, 4, 12),
        (90, 12, 4, 14),
        (110, 14, 4, 1),
    ]
    # 64,000,000 floats -> 72,400: 884x smaller.
    assert 32 * 1_000_000 * 64 // layer.serving_bits() == 883


def test_balanced_factorisations() -> None:
    assert balanced_row_factors(1682, 3) == [12, 12, 12]  # 1728 >= 1682
    assert balanced_row_factors(2000, 3) == [13, 13, 12]  # 2028 >= 2000
    assert balanced_row_factors(1000, 3) == [10, 10, 10]
    assert balanced_row_factors(7, 2) == [3, 3]
    assert balanced_dim_factors(64, 3) == [4, 4, 4]
    assert balanced_dim_factors(32, 3) == [4, 4, 2]
    assert balanced_dim_factors(7, 3) == [7, 1, 1]


def test_row_is_the_chain_product_of_core_slices() -> None:
    layer = TTRecEmbedding(61, 8, n_factors=[4, 4, 4], d_factors=[2, 2, 2], tt_rank=[3, 5])
    g1, g2, g3 = (c.detach() for c in layer.cores)
    for ident in (1, 2, 17, 60):
        x = ident - 1
        i1, i2, i3 = x // 16, (x // 4) % 4, x % 4
        expected = torch.einsum("ajb,bkc,clz->jkl", g1[i1], g2[i2], g3[i3]).reshape(8)
        torch.testing.assert_close(layer(torch.tensor(ident)), expected)
    assert torch.all(layer(torch.tensor([0])) == 0)


def test_full_table_contracts_whole_cores() -> None:
    layer = TTRecEmbedding(2001, 64, tt_rank=[5, 7])
    table = layer.full_table()
    assert table.shape == (2001, 64) and torch.all(table[0] == 0)
    ids = torch.arange(2001)
    torch.testing.assert_close(table, layer(ids), rtol=1e-5, atol=1e-7)
    # tt_full over the cores alone gives rows 1..n
    torch.testing.assert_close(tt_full(list(layer.cores), 2000), table[1:])


def test_init_std_of_the_product() -> None:
    layer = TTRecEmbedding(20_001, 64, tt_rank=16, init_std=0.01)
    assert 0.008 < layer.full_table()[1:].std().item() < 0.012


def test_padding_gets_no_gradient() -> None:
    layer = TTRecEmbedding(101, 8, tt_rank=4)
    layer(torch.tensor([0, 0])).sum().backward()
    assert all(float(c.grad.abs().sum()) == 0 for c in layer.cores)


def test_solve_budget_largest_rank_from_below() -> None:
    n, d = 2000, 64
    full = 32 * n * d
    for budget in (0.05, 0.1, 0.25, 0.5):
        rank = TTRecEmbedding.solve_budget(budget, n, d, init_std=0.02)["tt_rank"]
        layer = TTRecEmbedding(n + 1, d, tt_rank=rank)
        bigger = TTRecEmbedding(n + 1, d, tt_rank=rank + 1)
        assert layer.serving_bits() / full <= budget < bigger.serving_bits() / full
    # 2000 -> [13, 13, 12], 64 -> [4, 4, 4]: bits(r) = 32 * (52 r + 52 r^2 + 48 r) <= 0.25 * 32 * 128000
    # -> 52 r^2 + 100 r <= 32000 -> r = 23 (52*529 + 2300 = 29808; r = 24: 32352)
    assert TTRecEmbedding.solve_budget(0.25, n, d)["tt_rank"] == 23


def test_solve_budget_minimum() -> None:
    # rank 1: 52 + 52 + 48 = 152 floats of 128000
    with pytest.raises(
        ConfigError, match=r"smallest achievable budget is 0\.0011875 \(tt_rank=1\)"
    ):
        TTRecEmbedding.solve_budget(0.001, 2000, 64)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"num_cores": 1}, "method.num_cores=1"),
        ({"tt_rank": 0}, "method.tt_rank=0"),
        ({"tt_rank": [4, 4, 4]}, "num_cores - 1 = 2 ranks"),
        ({"d_factors": [4, 4, 2]}, "multiply to 32, not the embedding dimension 64"),
        ({"n_factors": [10, 10]}, "must hold num_cores = 3 factors"),
        ({"init_std": 0}, "method.init_std=0"),
    ],
)
def test_check_knobs(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        TTRecEmbedding.check_knobs(64, **knobs)
    assert "\n" not in str(err.value)


def test_row_factors_must_cover_the_ids() -> None:
    with pytest.raises(ConfigError, match=r"multiply to 1000 < 2000 ids"):
        TTRecEmbedding(2001, 64, n_factors=[10, 10, 10])


def test_large_lookups_gather_from_the_materialised_table(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = TTRecEmbedding(301, 16, tt_rank=[3, 4])
    ids = torch.randint(0, 301, (5, 40))
    weights = torch.randn(5, 40, 16)
    results = []
    for fraction in (0.0, float("inf")):  # always dense, never dense
        monkeypatch.setattr(TTRecEmbedding, "dense_fraction", fraction)
        layer.zero_grad()
        out = layer(ids)
        (out * weights).sum().backward()
        results.append((out.detach(), [c.grad.clone() for c in layer.cores]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    for dense, per_id in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(dense, per_id, rtol=1e-4, atol=1e-7)
    assert torch.all(results[0][0][ids == 0] == 0)


@pytest.mark.parametrize("decay_cores", [False, True])
def test_weight_decay_skips_the_cores_unless_asked(decay_cores: bool) -> None:
    """With zero gradients Adam moves a (nonzero) parameter only through its weight decay: GMF's
    output weight must move, TT-Rec's cores only with ``decay_cores=true``."""
    import functools

    from recbench.engine.optim import make_optimizer
    from recbench.models.base import DataInfo
    from recbench.models.gmf import GMF
    from tests.test_training import small_ranking_data

    torch.manual_seed(0)
    factory = functools.partial(TTRecEmbedding, tt_rank=4, decay_cores=decay_cores)
    model = GMF(DataInfo.from_prepared(small_ranking_data()), factory, embedding_dim=8)
    optimizer = make_optimizer(model, lr=0.01, weight_decay=0.1)
    cores = [c for layer in (model.user_embedding, model.item_embedding) for c in layer.cores]
    others = [model.output.weight]
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    moved = {id(p): not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before)}
    assert all(moved[id(p)] for p in others)
    assert all(moved[id(c)] == decay_cores for c in cores)
    assert model.item_embedding.knobs()["decay_cores"] is decay_cores
