"""Bloom embeddings: k seeded hashes, averaged rows, formula, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbench.embeddings import BloomEmbedding
from recbench.embeddings.hashing import hash_ids
from recbench.errors import ConfigError


def test_seeds_are_a_block_of_k_and_mapping_shape() -> None:
    layer = BloomEmbedding(201, 4, num_hashes=3, num_buckets=31, hash_family="xxhash", hash_seed=10)
    assert layer.mapping.shape == (201, 3)
    for j in range(3):  # function j of hash_seed 10 uses seed 10 * 3 + j: blocks never overlap
        expected = hash_ids(np.arange(1, 201), "xxhash", 30 + j, 31)
        np.testing.assert_array_equal(layer.mapping[1:, j].numpy(), expected)
    assert "mapping" not in layer.state_dict()


def test_vectors_are_averaged_by_hand() -> None:
    layer = BloomEmbedding(21, 3, num_hashes=2, num_buckets=5, hash_seed=4)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(15, dtype=torch.float32).reshape(5, 3))
    for i in range(1, 21):
        a, b = (int(hash_ids(np.array([i]), "murmur3", 8 + j, 5)[0]) for j in range(2))
        by_hand = [(3 * a + c + 3 * b + c) / 2 for c in range(3)]
        assert layer(torch.tensor(i)).tolist() == pytest.approx(by_hand)
    assert layer(torch.tensor(0)).tolist() == [0.0, 0.0, 0.0]


def test_one_hash_is_the_hashing_trick() -> None:
    from recbench.embeddings import HashingTrickEmbedding

    bloom = BloomEmbedding(101, 4, num_hashes=1, num_buckets=13, hash_seed=5)
    trick = HashingTrickEmbedding(101, 4, num_buckets=13, hash_seed=5)
    trick.load_state_dict(bloom.state_dict())
    ids = torch.arange(101)
    torch.testing.assert_close(bloom(ids), trick(ids))


def test_serving_bits_formula() -> None:
    layer = BloomEmbedding(2001, 64, num_hashes=4, compression_ratio=0.25)
    assert layer.serving_bits() == 32 * 500 * 64 == 1_024_000


def test_gradients_reach_every_hashed_bucket() -> None:
    layer = BloomEmbedding(101, 4, num_hashes=2, num_buckets=20)
    layer(torch.arange(101)).sum().backward()
    touched = torch.unique(layer.mapping[1:])
    assert torch.all(layer.weight.grad[touched].abs().sum(1) > 0)


def test_serving_round_trip() -> None:
    layer = BloomEmbedding(301, 8, num_hashes=3, num_buckets=40, hash_family="sha256", hash_seed=2)
    rebuilt = BloomEmbedding.table_from_serving(layer.serving_tensors(), layer.serving_meta())
    torch.testing.assert_close(rebuilt, layer.full_table())


def test_solve_budget_from_below_and_minimum() -> None:
    n, d = 3000, 32
    for budget in (0.4, 0.05, 0.001):
        solved = BloomEmbedding.solve_budget(budget, n, d, num_hashes=3)
        assert solved["num_hashes"] == 3
        bits = BloomEmbedding(n + 1, d, **solved).serving_bits()
        assert bits / (32 * n * d) <= budget < (bits + 32 * d) / (32 * n * d)
    with pytest.raises(ConfigError, match=r"smallest achievable budget is 0\.000333"):
        BloomEmbedding.solve_budget(1e-4, n, d)


def test_check_knobs() -> None:
    with pytest.raises(ConfigError, match="method.num_hashes=0"):
        BloomEmbedding.check_knobs(8, num_hashes=0)
    with pytest.raises(ConfigError, match="method.hash_seed"):
        BloomEmbedding.check_knobs(8, num_hashes=2, hash_seed=2**31)  # 2 * seed + 1 overflows
    BloomEmbedding.check_knobs(8, num_hashes=2, hash_seed=2**31 - 1)  # the largest: seed 2**32 - 1
    with pytest.raises(ConfigError, match="method.hash_family=foo"):
        BloomEmbedding(11, 4, hash_family="foo")
