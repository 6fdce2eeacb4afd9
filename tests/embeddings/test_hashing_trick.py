"""Hashing trick: formula, mapping, equivalence with full when the hash is injective, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbench.embeddings import BloomEmbedding, FullEmbedding, HashingTrickEmbedding
from recbench.embeddings import hashing as hashing_module
from recbench.embeddings.hashing import HashFamily, hash_ids
from recbench.errors import ConfigError


def test_serving_bits_formula_and_resolved_buckets() -> None:
    layer = HashingTrickEmbedding(2001, 64, compression_ratio=0.25)
    assert layer.num_buckets == 500
    assert layer.serving_bits() == 32 * 500 * 64 == 1_024_000
    assert HashingTrickEmbedding(2001, 8, num_buckets=37).serving_bits() == 32 * 37 * 8
    assert layer.weight.shape == (500, 64)
    assert "mapping" not in layer.state_dict()  # recomputable, never stored
    assert not isinstance(layer.mapping, torch.nn.Parameter)


def test_mapping_is_the_hash_of_each_id() -> None:
    layer = HashingTrickEmbedding(301, 4, num_buckets=17, hash_family="sha1", hash_seed=9)
    expected = hash_ids(np.arange(1, 301), "sha1", 9, 17)
    np.testing.assert_array_equal(layer.mapping[1:, 0].numpy(), expected)
    ids = torch.tensor([[3, 0], [300, 17]])
    out = layer(ids)
    torch.testing.assert_close(out[0, 0], layer.weight[expected[2]])
    torch.testing.assert_close(out[1, 0], layer.weight[expected[299]])
    assert torch.all(out[0, 1] == 0)


def test_seed_and_family_change_the_mapping() -> None:
    a = HashingTrickEmbedding(1001, 4, num_buckets=100, hash_seed=0).mapping
    b = HashingTrickEmbedding(1001, 4, num_buckets=100, hash_seed=1).mapping
    c = HashingTrickEmbedding(1001, 4, num_buckets=100, hash_family="md5").mapping
    assert (a != b).float().mean() > 0.9 and (a != c).float().mean() > 0.9


def test_injective_hash_with_m_equal_n_behaves_like_full(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = HashFamily("identity", lambda ids, seed: (ids - 1).astype(np.uint64), 64, True)
    monkeypatch.setitem(hashing_module.FAMILIES, "identity", identity)
    n, d = 50, 6
    hashed = HashingTrickEmbedding(n + 1, d, num_buckets=n, hash_family="identity")
    full = FullEmbedding(n + 1, d)
    with torch.no_grad():
        full.weight_table.weight[1:] = hashed.weight
    ids = torch.randint(0, n + 1, (7, 9))
    torch.testing.assert_close(hashed(ids), full(ids))
    torch.testing.assert_close(hashed.full_table(), full.full_table())
    assert hashed.serving_bits() == full.serving_bits() == 32 * n * d


def test_gradients_reach_the_table_and_padding_gets_none() -> None:
    layer = HashingTrickEmbedding(101, 4, num_buckets=10)
    layer(torch.tensor([0, 0, 0])).sum().backward()
    assert layer.weight.grad is not None and torch.all(layer.weight.grad == 0)
    layer.weight.grad = None
    layer(torch.arange(101)).sum().backward()
    assert layer.weight.grad.abs().sum() > 0


def test_serving_round_trip_recomputes_the_mapping() -> None:
    layer = HashingTrickEmbedding(501, 8, num_buckets=40, hash_family="farmhash", hash_seed=3)
    tensors = layer.serving_tensors()
    assert set(tensors) == {"table"}
    rebuilt = HashingTrickEmbedding.table_from_serving(tensors, layer.serving_meta())
    torch.testing.assert_close(rebuilt, layer.full_table())


def test_solve_budget_from_below() -> None:
    n, d = 2000, 64
    knobs = {"hash_family": "md5", "hash_seed": 1, "compression_ratio": 0.25}
    for budget in (0.5, 0.1, 0.0123, 0.29):
        solved = HashingTrickEmbedding.solve_budget(budget, n, d, **knobs)
        assert solved["hash_family"] == "md5" and solved["compression_ratio"] is None
        layer = HashingTrickEmbedding(n + 1, d, **solved)
        full = 32 * n * d
        assert layer.serving_bits() / full <= budget
        assert (layer.serving_bits() + 32 * d) / full > budget  # one more bucket would not fit
    assert HashingTrickEmbedding.solve_budget(0.29, 100, 4)["num_buckets"] == 29


def test_solve_budget_below_minimum_names_it() -> None:
    with pytest.raises(ConfigError, match=r"smallest achievable budget is 0\.0005"):
        HashingTrickEmbedding.solve_budget(0.0001, 2000, 64)


def test_check_knobs() -> None:
    HashingTrickEmbedding.check_knobs(64, num_buckets=None, compression_ratio=0.1)
    with pytest.raises(ConfigError, match="method.hash_family=crc"):
        HashingTrickEmbedding.check_knobs(64, hash_family="crc")
    with pytest.raises(ConfigError, match="method.num_buckets=0"):
        HashingTrickEmbedding.check_knobs(64, num_buckets=0)
    with pytest.raises(ConfigError, match="method.compression_ratio"):
        HashingTrickEmbedding.check_knobs(64, num_buckets=None, compression_ratio=None)
    with pytest.raises(ConfigError, match="method.init_std"):
        HashingTrickEmbedding(11, 4, init_std=0)


@pytest.mark.parametrize(
    "family, seed", [("murmur3", 0), ("murmur3", 7), ("xxhash", 3), ("md5", 1)]
)
def test_hashing_trick_is_bloom_with_one_hash(family: str, seed: int) -> None:
    """The shared hashed-table base must keep the hashing trick's mapping: bucket ``hash(id) % m``
    with the seed ``hash_seed`` itself (computed here by ``hash_ids``, independently of both
    layers), which is also Bloom's only function for ``k = 1`` (seed ``hash_seed * 1 + 0``); with
    the same torch seed both layers start from the same table and serve the same vectors."""
    n, d, m = 400, 6, 37
    torch.manual_seed(5)
    hashed = HashingTrickEmbedding(n + 1, d, num_buckets=m, hash_family=family, hash_seed=seed)
    torch.manual_seed(5)
    bloom = BloomEmbedding(
        n + 1, d, num_hashes=1, num_buckets=m, hash_family=family, hash_seed=seed
    )
    expected = hash_ids(np.arange(1, n + 1), family, seed, m)
    np.testing.assert_array_equal(hashed.mapping[1:, 0].numpy(), expected)
    assert torch.equal(hashed.mapping, bloom.mapping)
    assert torch.equal(hashed.weight, bloom.weight)
    ids = torch.randint(0, n + 1, (5, 7))
    assert torch.equal(hashed(ids), bloom(ids))
    assert torch.equal(hashed.full_table(), bloom.full_table())
    rebuilt = HashingTrickEmbedding.table_from_serving(
        hashed.serving_tensors(), hashed.serving_meta()
    )
    assert torch.equal(rebuilt, hashed.full_table())
    assert hashed.serving_bits() == bloom.serving_bits() == 32 * m * d
    assert "num_hashes" not in hashed.knobs() and bloom.knobs()["num_hashes"] == 1
