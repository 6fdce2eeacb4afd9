"""Hash families that map integer ids to buckets (hashing trick, Bloom embeddings).

Every family hashes the 8-byte little-endian ``int64`` form of an id together with a seed, so a
mapping depends only on ``(family, seed, num_buckets)`` and the id itself: it is recomputed, never
stored, by ``table_from_serving``. The families are the seven of the Bloom-embedding study (Serrà &
Karatzoglou, RecSys 2017, re-run with several hash functions):

============  =====  ===========  =================================================================
family        bits   vectorised   definition (key = id as 8 little-endian bytes)
============  =====  ===========  =================================================================
murmur3       32     numpy        MurmurHash3 x86_32(key, seed) == ``mmh3.hash(key, seed, signed=False)``
xxhash        32     numpy        XXH32(key, seed) == ``xxhash.xxh32_intdigest(key, seed)``
md5           64     Python loop  first 8 digest bytes (little-endian) of md5(seed_le8 + key)
sha1          64     Python loop  same with sha1
sha256        64     Python loop  same with sha256
metrohash     64     Python loop  ``metrohash.hash64_int(key, seed)`` (MetroHash64)
farmhash      64     Python loop  ``farmhash.hash64withseed(key, seed)`` (FarmHash64)
============  =====  ===========  =================================================================

Why two are vectorised: murmur3 (the default) and xxhash are simple enough to write as ``uint32``
array arithmetic over the two 4-byte blocks of the key, which hashes millions of ids per second; the
others call their library once per id (about 0.2 s per million ids for metrohash/farmhash and
0.5 to 0.7 s for md5/sha1/sha256 on one core, against about 0.02 s for the vectorised two; see
``scripts/bench_hashing.py``). Mappings are computed once per layer, so either speed is acceptable.

A bucket is ``hash % num_buckets`` (the modulo bias is below ``num_buckets / 2**bits``).
FarmHash's seeded ``hash64`` is not guaranteed stable across FarmHash releases (only its
fingerprints are); the pinned ``pyfarmhash==0.5.1`` keeps it reproducible.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recbench.errors import BudgetError, ConfigError

MAX_SEED = 2**32  # seeds are unsigned 32-bit: the widest seed every family accepts
#: Modulus ``p`` of the universal hashes ``(a*x + b) % p`` of DHE and ROBE (a Mersenne prime).
PRIME = 2**31 - 1

_U32 = np.uint32


@dataclass(frozen=True)
class HashFamily:
    """One hash family: ``fn(ids int64 array, seed) -> uint64 hash values`` and its properties."""

    name: str
    fn: Callable[[np.ndarray, int], np.ndarray]
    bits: int  # width of the hash value: buckets beyond 2**bits are unreachable
    vectorised: bool  # numpy over the whole array (True) or one library call per id (False)


# ------------------------------------------------------------------ vectorised
def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U32(r)) | (x >> _U32(32 - r))


def _key_words(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two little-endian 4-byte blocks of each id's 8-byte key, as uint32 arrays."""
    words = np.ascontiguousarray(ids, dtype="<i8").view("<u4").reshape(-1, 2)
    return words[:, 0].astype(_U32), words[:, 1].astype(_U32)


def murmur3_x86_32(ids: np.ndarray, seed: int) -> np.ndarray:
    """MurmurHash3 x86_32 of each id's 8-byte key, bit-exact with ``mmh3.hash(key, seed, signed=False)``.

    Two full 4-byte blocks, no tail, length 8, then the fmix32 finaliser.
    """
    c1, c2 = _U32(0xCC9E2D51), _U32(0x1B873593)
    h = np.full(np.size(ids), seed, dtype=_U32)
    for k in _key_words(ids):
        k = _rotl32(k * c1, 15) * c2
        h = _rotl32(h ^ k, 13) * _U32(5) + _U32(0xE6546B64)
    h ^= _U32(8)
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


def xxh32(ids: np.ndarray, seed: int) -> np.ndarray:
    """XXH32 of each id's 8-byte key, bit-exact with ``xxhash.xxh32_intdigest(key, seed)``.

    Inputs shorter than 16 bytes skip the four-lane loop: ``seed + PRIME5 + len``, two 4-byte
    rounds, then the avalanche.
    """
    p2, p3, p4, p5 = _U32(0x85EBCA77), _U32(0xC2B2AE3D), _U32(0x27D4EB2F), _U32(0x165667B1)
    h = np.full(np.size(ids), seed, dtype=_U32) + p5 + _U32(8)
    for k in _key_words(ids):
        h = _rotl32(h + k * p3, 17) * p4
    h ^= h >> _U32(15)
    h *= p2
    h ^= h >> _U32(13)
    h *= p3
    h ^= h >> _U32(16)
    return h


# ------------------------------------------------------------------ per-id loops
def _keys(ids: np.ndarray) -> list[bytes]:
    raw = np.ascontiguousarray(ids, dtype="<i8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def _digest_family(constructor: Callable[[bytes], Any]) -> Callable[[np.ndarray, int], np.ndarray]:
    def fn(ids: np.ndarray, seed: int) -> np.ndarray:
        prefix = int(seed).to_bytes(8, "little")
        first8 = b"".join(constructor(prefix + key).digest()[:8] for key in _keys(ids))
        return np.frombuffer(first8, dtype="<u8").astype(np.uint64)

    return fn


def _metrohash(ids: np.ndarray, seed: int) -> np.ndarray:
    import metrohash

    keys = _keys(ids)
    return np.fromiter((metrohash.hash64_int(k, seed) for k in keys), np.uint64, len(keys))


def _farmhash(ids: np.ndarray, seed: int) -> np.ndarray:
    import farmhash

    keys = _keys(ids)
    return np.fromiter((farmhash.hash64withseed(k, seed) for k in keys), np.uint64, len(keys))


FAMILIES: dict[str, HashFamily] = {
    f.name: f
    for f in (
        HashFamily(
            "murmur3", lambda ids, seed: murmur3_x86_32(ids, seed).astype(np.uint64), 32, True
        ),
        HashFamily("xxhash", lambda ids, seed: xxh32(ids, seed).astype(np.uint64), 32, True),
        HashFamily("md5", _digest_family(hashlib.md5), 64, False),
        HashFamily("sha1", _digest_family(hashlib.sha1), 64, False),
        HashFamily("sha256", _digest_family(hashlib.sha256), 64, False),
        HashFamily("metrohash", _metrohash, 64, False),
        HashFamily("farmhash", _farmhash, 64, False),
    )
}


# ------------------------------------------------------------------ public API
def check_hash_knobs(family: str, seed: int, num_seeds: int = 1) -> None:
    """Raise ``ConfigError`` for an unknown family or a seed whose block of ``num_seeds`` hash
    seeds ``seed * num_seeds .. seed * num_seeds + num_seeds - 1`` leaves ``[0, 2**32)``."""
    if family not in FAMILIES:
        raise ConfigError(
            f"method.hash_family={family} is unknown; use one of {', '.join(FAMILIES)}"
        )
    largest = MAX_SEED // num_seeds - 1
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"method.hash_seed={seed} must be an integer in [0, {largest}]")
    if not 0 <= int(seed) <= largest:
        raise ConfigError(
            f"method.hash_seed={seed} is out of range; use an integer in [0, {largest}]"
            + (
                f" (hash seeds hash_seed*{num_seeds}..hash_seed*{num_seeds}+{num_seeds - 1} are used)"
                if num_seeds > 1
                else ""
            )
        )


def hash_ids(ids: np.ndarray, family: str, seed: int, num_buckets: int) -> np.ndarray:
    """Bucket in ``[0, num_buckets)`` of each id (any shape, int64), as an int64 array."""
    check_hash_knobs(family, seed)
    fam = FAMILIES[family]
    if not 1 <= int(num_buckets) <= 2**fam.bits:
        raise ConfigError(
            f"method.num_buckets={num_buckets} is out of range for the {fam.bits}-bit "
            f"{family} hash; use 1..{2**fam.bits}"
        )
    ids = np.asarray(ids, dtype=np.int64)
    hashed = fam.fn(ids.reshape(-1), int(seed))
    return (hashed % np.uint64(num_buckets)).astype(np.int64).reshape(ids.shape)


def check_universal_hash_ids(num_embeddings: int, method: str) -> None:
    """Ids of a universal hash ``(a*x + b) % PRIME`` must stay below ``PRIME``: distinct ids
    would otherwise hash alike. Raises ``ConfigError`` for a larger vocabulary."""
    if num_embeddings > PRIME:
        raise ConfigError(
            f"{num_embeddings - 1} ids exceed {method}'s universal hash (ids must stay below 2^31 - 1)"
        )


# ------------------------------------------------------------ bucket-count knobs
def check_bucket_knobs(num_buckets: int | None, compression_ratio: float | None) -> None:
    """Validate the pair of knobs that define the bucket count ``m`` (see ``resolve_num_buckets``)."""
    if num_buckets is not None:
        if isinstance(num_buckets, bool) or int(num_buckets) != num_buckets or num_buckets < 1:
            raise ConfigError(f"method.num_buckets={num_buckets} must be an integer >= 1 (or null)")
        return
    if compression_ratio is None:
        raise ConfigError(
            "method.num_buckets=null and method.compression_ratio=null leave the bucket count "
            "undefined; set one of them (e.g. method.compression_ratio=0.25)"
        )
    if not compression_ratio > 0:
        raise ConfigError(
            f"method.compression_ratio={compression_ratio} must be > 0 (buckets per id, e.g. 0.25)"
        )


def resolve_num_buckets(
    num_buckets: int | None, compression_ratio: float | None, num_ids: int
) -> int:
    """Bucket count ``m``: ``num_buckets`` when set (it wins), else ``floor(compression_ratio * n)``
    (at least 1). Flooring keeps ``m / n <= compression_ratio``."""
    check_bucket_knobs(num_buckets, compression_ratio)
    if num_buckets is not None:
        return int(num_buckets)
    assert compression_ratio is not None
    return max(1, math.floor(float(compression_ratio) * num_ids + 1e-9))


def bucket_mapping(num_embeddings: int, family: str, seeds: list[int], num_buckets: int) -> Tensor:
    """``(num_embeddings, len(seeds))`` long tensor: bucket of every id under every seed.

    Row 0 (padding) is all zeros; the layers zero its output, so it never reads a real id's row.
    """
    ids = np.arange(1, num_embeddings, dtype=np.int64)
    columns = [hash_ids(ids, family, seed, num_buckets) for seed in seeds]
    mapping = np.zeros((num_embeddings, len(seeds)), dtype=np.int64)
    mapping[1:] = np.stack(columns, axis=1)
    return torch.from_numpy(mapping)


def solve_buckets(name: str, budget: float, num_ids: int) -> int:
    """Largest bucket count ``m`` with ``m / n <= budget`` (layers whose size is ``32*m*d``)."""
    m = int(np.floor(budget * num_ids + 1e-9))
    while m >= 1 and m / num_ids > budget:
        m -= 1
    if m < 1:
        raise BudgetError.unreachable(name, budget, num_ids, 1 / num_ids, "num_buckets=1")
    return m
