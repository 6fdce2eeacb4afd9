"""Low rank: formula, factorised forward, budgets."""

from __future__ import annotations

import pytest
import torch

from recbench.embeddings import LowRankEmbedding
from recbench.errors import ConfigError


def test_serving_bits_by_hand() -> None:
    layer = LowRankEmbedding(2001, 64, rank=16)
    assert layer.serving_bits() == 32 * (2000 * 16 + 16 * 64) == 1_056_768
    assert layer.table.shape == (2000, 16) and layer.projection.shape == (16, 64)


def test_forward_is_table_times_projection() -> None:
    layer = LowRankEmbedding(21, 6, rank=2)
    out = layer(torch.tensor([[0, 5], [20, 1]]))
    assert torch.all(out[0, 0] == 0)
    torch.testing.assert_close(out[0, 1], layer.table[4] @ layer.projection)
    torch.testing.assert_close(out[1, 0], layer.table[19] @ layer.projection)
    torch.testing.assert_close(layer.full_table()[1:], layer.table @ layer.projection)


def test_init_scale_matches_full() -> None:
    layer = LowRankEmbedding(5001, 64, rank=16, init_std=0.01)
    assert 0.008 < layer.full_table()[1:].std().item() < 0.012


def test_gradients_reach_both_factors() -> None:
    layer = LowRankEmbedding(51, 8, rank=3)
    (layer(torch.arange(51)) * torch.randn(51, 8)).sum().backward()
    assert layer.table.grad.abs().sum(1).gt(0).all() and layer.projection.grad.abs().sum() > 0


def test_serving_round_trip() -> None:
    layer = LowRankEmbedding(41, 8, rank=3)
    rebuilt = LowRankEmbedding.table_from_serving(layer.serving_tensors(), layer.serving_meta())
    torch.testing.assert_close(rebuilt, layer.full_table())


def test_solve_budget_largest_rank() -> None:
    n, d = 2000, 64
    full = 32 * n * d
    for budget in (0.05, 0.25, 0.5, 1.0, 2.0):
        rank = LowRankEmbedding.solve_budget(budget, n, d, init_std=0.02)["rank"]
        bits = 32 * (n * rank + rank * d)
        assert bits / full <= budget and rank <= d
        assert rank == d or 32 * (n + d) * (rank + 1) / full > budget
    # r <= 0.25 * 2000 * 64 / 2064 = 15.5 -> 15
    assert LowRankEmbedding.solve_budget(0.25, n, d)["rank"] == 15
    assert LowRankEmbedding.solve_budget(0.25, n, d, init_std=0.02)["init_std"] == 0.02


def test_solve_budget_minimum() -> None:
    # rank 1: (2000 + 64) / (2000 * 64) = 0.016125
    with pytest.raises(ConfigError, match=r"smallest achievable budget is 0\.016125 \(rank=1\)"):
        LowRankEmbedding.solve_budget(0.01, 2000, 64)


def test_check_knobs() -> None:
    with pytest.raises(ConfigError, match="method.rank=65"):
        LowRankEmbedding.check_knobs(64, rank=65)
    with pytest.raises(ConfigError, match="method.rank=0"):
        LowRankEmbedding(11, 4, rank=0)
