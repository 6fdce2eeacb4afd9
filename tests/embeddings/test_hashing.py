"""Hash families: vectorised ones bit-exact with their reference libraries; all deterministic,
in range, roughly uniform and seed-dependent."""

from __future__ import annotations

import hashlib

import mmh3
import numpy as np
import pytest
import xxhash

from recbench.embeddings.hashing import (
    FAMILIES,
    bucket_mapping,
    hash_ids,
    murmur3_x86_32,
    resolve_num_buckets,
    xxh32,
)
from recbench.errors import ConfigError

SEEDS = [0, 1, 42, 2**31 + 7, 2**32 - 1]


def _random_ids(size: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(0)
    edge = np.array([0, 1, -1, 2**63 - 1, -(2**63), 2**32, 2**31 - 1], dtype=np.int64)
    return np.concatenate([edge, rng.integers(-(2**63), 2**63 - 1, size, dtype=np.int64)])


def _key(i: int) -> bytes:
    return int(i).to_bytes(8, "little", signed=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_murmur3_bit_exact_with_mmh3(seed: int) -> None:
    ids = _random_ids()
    expected = np.array([mmh3.hash(_key(i), seed, signed=False) for i in ids], dtype=np.uint32)
    np.testing.assert_array_equal(murmur3_x86_32(ids, seed), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_xxh32_bit_exact_with_xxhash(seed: int) -> None:
    ids = _random_ids()
    expected = np.array([xxhash.xxh32_intdigest(_key(i), seed) for i in ids], dtype=np.uint32)
    np.testing.assert_array_equal(xxh32(ids, seed), expected)


def test_loop_families_follow_their_definition() -> None:
    ids = np.array([1, 2, 12345, -3], dtype=np.int64)
    seed = 7
    prefix = seed.to_bytes(8, "little")
    md5 = [int.from_bytes(hashlib.md5(prefix + _key(i)).digest()[:8], "little") % 97 for i in ids]
    np.testing.assert_array_equal(hash_ids(ids, "md5", seed, 97), md5)
    import farmhash
    import metrohash

    metro = [metrohash.hash64_int(_key(i), seed) % 97 for i in ids]
    farm = [farmhash.hash64withseed(_key(i), seed) % 97 for i in ids]
    np.testing.assert_array_equal(hash_ids(ids, "metrohash", seed, 97), metro)
    np.testing.assert_array_equal(hash_ids(ids, "farmhash", seed, 97), farm)


def test_registry_has_the_seven_families() -> None:
    assert set(FAMILIES) == {"murmur3", "xxhash", "md5", "sha1", "sha256", "metrohash", "farmhash"}
    assert {f for f, fam in FAMILIES.items() if fam.vectorised} == {"murmur3", "xxhash"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_deterministic_in_range_uniform_and_seeded(family: str) -> None:
    ids = np.arange(1, 20_001, dtype=np.int64)
    buckets = 50
    first = hash_ids(ids, family, 3, buckets)
    assert first.dtype == np.int64 and first.shape == ids.shape
    np.testing.assert_array_equal(first, hash_ids(ids, family, 3, buckets))  # deterministic
    assert first.min() >= 0 and first.max() < buckets
    # Chi-square with 49 degrees of freedom: mean 49, sd ~9.9; 49 + 6 sd is a safe bound.
    observed = np.bincount(first, minlength=buckets)
    expected = len(ids) / buckets
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 49 + 6 * 9.9, f"{family}: chi2={chi2:.1f}"
    other = hash_ids(ids, family, 4, buckets)
    assert (other != first).mean() > 0.9  # another seed: an essentially new mapping (~98% differ)


def test_hash_ids_keeps_shape() -> None:
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    out = hash_ids(ids, "murmur3", 0, 5)
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out.reshape(-1), hash_ids(ids.reshape(-1), "murmur3", 0, 5))


def test_unknown_family_lists_the_families() -> None:
    with pytest.raises(ConfigError, match="method.hash_family=crc32") as info:
        hash_ids(np.arange(3), "crc32", 0, 10)
    for name in FAMILIES:
        assert name in str(info.value)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ConfigError, match="method.hash_seed"):
        hash_ids(np.arange(3), "murmur3", seed, 10)  # type: ignore[arg-type]


def test_bad_num_buckets() -> None:
    with pytest.raises(ConfigError, match="method.num_buckets=0"):
        hash_ids(np.arange(3), "md5", 0, 0)
    with pytest.raises(ConfigError, match="32-bit"):
        hash_ids(np.arange(3), "murmur3", 0, 2**32 + 1)


def test_resolve_num_buckets() -> None:
    assert resolve_num_buckets(None, 0.25, 2000) == 500
    assert resolve_num_buckets(None, 0.29, 100) == 29  # float 0.29*100 = 28.999...; not 28
    assert resolve_num_buckets(None, 1e-9, 100) == 1
    assert resolve_num_buckets(7, 0.25, 100) == 7  # num_buckets wins
    with pytest.raises(ConfigError, match="compression_ratio"):
        resolve_num_buckets(None, None, 100)
    with pytest.raises(ConfigError, match="method.compression_ratio=-0.1"):
        resolve_num_buckets(None, -0.1, 100)


def test_bucket_mapping_row_zero_and_columns() -> None:
    mapping = bucket_mapping(11, "xxhash", [5, 6], 4)
    assert mapping.shape == (11, 2)
    assert mapping[0].tolist() == [0, 0]
    np.testing.assert_array_equal(
        mapping[1:, 1].numpy(), hash_ids(np.arange(1, 11), "xxhash", 6, 4)
    )
