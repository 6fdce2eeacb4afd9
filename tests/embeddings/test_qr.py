"""Quotient-remainder: integer index split, uniqueness, combiners, formula, budgets."""

from __future__ import annotations

import math

import pytest
import torch

from recbench.embeddings import QuotientRemainderEmbedding
from recbench.embeddings.qr import qr_indices
from recbench.errors import BudgetError, ConfigError


def test_indices_are_exact_integer_division() -> None:
    # Ids far beyond float64's 2**53 would be mangled by any float division.
    ids = torch.tensor([1, 2, 7, 8, 2**60 + 3, 2**62 + 12345, 2**53 + 1])
    m = 7
    q, r = qr_indices(ids, m)
    assert q.dtype == torch.int64 and r.dtype == torch.int64
    for i, qi, ri in zip(ids.tolist(), q.tolist(), r.tolist()):
        assert (qi, ri) == divmod(i - 1, m)


def test_keras_user_table_size() -> None:
    # Keras example: 6040 users, num_buckets = 6040 // 50 = 120, d = 64.
    layer = QuotientRemainderEmbedding(6041, 64, num_buckets=120)
    assert layer.quotient.shape == (51, 64) and layer.remainder.shape == (120, 64)
    assert layer.serving_bits() == 32 * (51 + 120) * 64 == 350_208
    assert QuotientRemainderEmbedding(6041, 64, compression_ratio=0.02).num_buckets == 120


def test_concat_splits_the_dimension() -> None:
    layer = QuotientRemainderEmbedding(101, 10, num_buckets=8, combiner="concat")
    assert layer.quotient.shape == (13, 5) and layer.remainder.shape == (8, 5)
    assert layer.serving_bits() == 32 * (13 * 5 + 8 * 5) == 3360
    out = layer(torch.tensor([9]))  # x = 8: q = 1, r = 0
    torch.testing.assert_close(out[0], torch.cat([layer.quotient[1], layer.remainder[0]]))


@pytest.mark.parametrize("combiner", ["mult", "add", "concat"])
def test_combiners_by_hand(combiner: str) -> None:
    layer = QuotientRemainderEmbedding(51, 4, num_buckets=6, combiner=combiner)
    x = 23  # id 24: q = 3, r = 5
    q, r = layer.quotient[3], layer.remainder[5]
    expected = {"mult": q * r, "add": q + r, "concat": torch.cat([q, r])}[combiner]
    torch.testing.assert_close(layer(torch.tensor([x + 1]))[0], expected)
    assert torch.all(layer(torch.tensor([0])) == 0)


@pytest.mark.parametrize("combiner", ["mult", "add", "concat"])
@pytest.mark.parametrize("m_extra", [0, 5])
def test_m_at_least_n_is_lossless(combiner: str, m_extra: int) -> None:
    n = 40
    layer = QuotientRemainderEmbedding(n + 1, 8, num_buckets=n + m_extra, combiner=combiner)
    table = layer.full_table()[1:]
    assert torch.unique(table, dim=0).shape[0] == n  # every id its own row
    assert layer.quotient.shape[0] == 1


@pytest.mark.parametrize("combiner", ["mult", "add", "concat"])
def test_distinct_ids_distinct_rows_in_general(combiner: str) -> None:
    layer = QuotientRemainderEmbedding(1001, 8, num_buckets=30, combiner=combiner)
    assert torch.unique(layer.full_table()[1:], dim=0).shape[0] == 1000


def test_mult_init_starts_near_a_full_table() -> None:
    layer = QuotientRemainderEmbedding(10001, 64, num_buckets=100, init_std=0.01)
    assert abs(layer.quotient.mean().item() - 1.0) < 0.01
    assert 0.008 < layer.full_table()[1:].std().item() < 0.012


def test_gradients_reach_both_tables() -> None:
    for combiner in ("mult", "add", "concat"):
        layer = QuotientRemainderEmbedding(101, 4, num_buckets=9, combiner=combiner)
        (layer(torch.arange(101)) * torch.randn(101, 4)).sum().backward()
        assert layer.quotient.grad.abs().sum(1).gt(0).all()
        assert layer.remainder.grad.abs().sum(1).gt(0).all()


def test_serving_round_trip() -> None:
    for combiner in ("mult", "add", "concat"):
        layer = QuotientRemainderEmbedding(97, 6, num_buckets=10, combiner=combiner)
        rebuilt = QuotientRemainderEmbedding.table_from_serving(
            layer.serving_tensors(), layer.serving_meta()
        )
        torch.testing.assert_close(rebuilt, layer.full_table())


def _size(n: int, d: int, m: int, combiner: str) -> int:
    if combiner == "concat":
        return 32 * (math.ceil(n / m) * d // 2 + m * d // 2)
    return 32 * (math.ceil(n / m) + m) * d


@pytest.mark.parametrize("combiner", ["mult", "concat"])
def test_solve_budget_is_the_best_fit_from_below(combiner: str) -> None:
    n, d = 2000, 16
    full = 32 * n * d
    for budget in (0.05, 0.1, 0.5, 1.0):
        m = QuotientRemainderEmbedding.solve_budget(budget, n, d, combiner=combiner)["num_buckets"]
        bits = QuotientRemainderEmbedding(n + 1, d, num_buckets=m, combiner=combiner).serving_bits()
        assert bits == _size(n, d, m, combiner) and bits / full <= budget
        best = max(
            _size(n, d, k, combiner)
            for k in range(1, n + 1)
            if _size(n, d, k, combiner) / full <= budget
        )
        assert bits == best  # nothing closer below exists (exhaustive check)


def test_solve_budget_minimum() -> None:
    # min over m of ceil(2000/m) + m is 90 (m = 45): 90 * 16 / (2000 * 16) = 0.045
    with pytest.raises(
        BudgetError, match=r"smallest achievable budget is 0\.045 \(num_buckets=45, combiner=mult\)"
    ):
        QuotientRemainderEmbedding.solve_budget(0.04, 2000, 16)


def test_check_knobs() -> None:
    with pytest.raises(ConfigError, match="method.combiner=concat.*even"):
        QuotientRemainderEmbedding.check_knobs(7, combiner="concat")
    with pytest.raises(ConfigError, match="method.combiner=max"):
        QuotientRemainderEmbedding.check_knobs(8, combiner="max")
    with pytest.raises(ConfigError, match="method.num_buckets=-2"):
        QuotientRemainderEmbedding(11, 4, num_buckets=-2)
