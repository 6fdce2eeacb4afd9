"""ROBE: blocks at hashed offsets by hand, the paper's 100 MB array, wrap-around, sign hash, budgets."""

from __future__ import annotations

import pytest
import torch

from recbench.embeddings import ROBEmbedding
from recbench.embeddings.robe import PRIME, robe_coefficients
from recbench.errors import ConfigError


def test_paper_memory_for_a_stated_array_size() -> None:
    # The paper trains the MLPerf CriteoTB DLRM "using ROBE array of size 100MB" in place of its
    # 100 GB of tables (1000x). A 100 MB float32 array holds 25,000,000 values; 100 GB of 128-dim
    # float32 rows is 195,312,500 rows.
    layer = ROBEmbedding(195_312_501, 128, array_size=25_000_000, block_size=32)
    assert layer.serving_bits() == 32 * 25_000_000 == 8 * 100_000_000  # 100 MB
    full_bits = 32 * 195_312_500 * 128
    assert full_bits == 8 * 100_000_000_000  # 100 GB
    assert full_bits // layer.serving_bits() == 1000
    # Lookups need no per-id state: the largest id reads its blocks like any other.
    assert layer(torch.tensor([195_312_500])).shape == (1, 128)


def test_blocks_at_hashed_offsets_by_hand() -> None:
    layer = ROBEmbedding(101, 8, array_size=50, block_size=3, hash_seed=5)
    A, B, D = (int(v) for v in robe_coefficients(5)[:3])
    array = layer.array.detach()
    for ident in (1, 42, 100):
        row = layer(torch.tensor([ident]))[0]
        for j in range(8):
            c, t = divmod(j, 3)  # chunks of 3, 3 and 2 dims
            offset = ((A * ident + B * c + D) % PRIME) % 50
            assert row[j].item() == array[(offset + t) % 50].item()


def test_blocks_wrap_around_the_array() -> None:
    layer = ROBEmbedding(2001, 64, array_size=7, block_size=64)
    with torch.no_grad():
        layer.array.copy_(torch.arange(7.0))
    row = layer(torch.tensor([9]))[0]
    start = int(row[0])
    assert row.tolist() == [float((start + t) % 7) for t in range(64)]


def test_sign_hash_flips_whole_blocks() -> None:
    plain = ROBEmbedding(501, 16, array_size=100, block_size=4, hash_seed=3)
    signed = ROBEmbedding(501, 16, array_size=100, block_size=4, hash_seed=3, sign_hash=True)
    signed.load_state_dict(plain.state_dict())
    ids = torch.arange(1, 501)
    ratio = (signed(ids) / plain(ids)).reshape(500, 4, 4)
    torch.testing.assert_close(ratio.abs(), torch.ones_like(ratio))
    assert torch.all(ratio == ratio[..., :1])  # one sign per block
    assert 0.4 < (ratio[..., 0] < 0).float().mean().item() < 0.6


def test_padding_gets_no_gradient() -> None:
    layer = ROBEmbedding(101, 8, array_size=30, block_size=4)
    out = layer(torch.tensor([0, 0, 3]))
    assert torch.all(out[:2] == 0)
    layer(torch.tensor([0, 0])).sum().backward()
    assert float(layer.array.grad.abs().sum()) == 0


def test_array_size_from_compression_ratio() -> None:
    assert ROBEmbedding(2001, 64, compression_ratio=0.1).array_size == 12_800
    assert ROBEmbedding(2001, 64, array_size=99, compression_ratio=0.1).array_size == 99


def test_full_table_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = ROBEmbedding(1001, 16, array_size=300, block_size=5, sign_hash=True)
    whole = layer.full_table()
    monkeypatch.setattr(ROBEmbedding, "chunk_size", 13)
    torch.testing.assert_close(layer.full_table(), whole)
    torch.testing.assert_close(layer(torch.arange(1001)), whole)


def test_solve_budget() -> None:
    n, d = 2000, 64
    for budget in (0.01, 0.1, 0.25):
        m = ROBEmbedding.solve_budget(budget, n, d, block_size=8)["array_size"]
        assert m / (n * d) <= budget < (m + 1) / (n * d)
    assert ROBEmbedding.solve_budget(0.25, n, d) == {
        "array_size": 32_000,
        "compression_ratio": None,
    }
    with pytest.raises(
        ConfigError, match=r"smallest achievable budget is 7\.8125e-06 \(array_size=1\)"
    ):
        ROBEmbedding.solve_budget(1e-6, n, d)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"array_size": 0}, "method.array_size=0"),
        ({"array_size": None, "compression_ratio": None}, "leave the array size undefined"),
        ({"compression_ratio": -1}, "method.compression_ratio=-1"),
        ({"block_size": 65}, r"method.block_size=65 must be an integer in \[1, 64\]"),
        ({"sign_hash": "yes"}, "method.sign_hash=yes"),
        ({"hash_seed": -2}, "method.hash_seed=-2"),
        ({"init_std": 0}, "method.init_std=0"),
    ],
)
def test_check_knobs(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        ROBEmbedding.check_knobs(64, **knobs)
    assert "\n" not in str(err.value)
