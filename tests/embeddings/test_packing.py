"""Bit packing of integer codes: exact size, little-endian layout, round trip, loud errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbench.embeddings import packing
from recbench.embeddings.packing import pack_bits, packed_size, unpack_bits


@pytest.mark.parametrize("bits", range(1, 17))
def test_round_trip_every_width(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    for count in (0, 1, 7, 8, 9, int(torch.randint(10, 3000, (1,), generator=gen))):
        codes = torch.randint(0, 1 << bits, (count,), generator=gen)
        packed = pack_bits(codes, bits)
        assert packed.dtype == torch.uint8
        assert packed.numel() == math.ceil(count * bits / 8) == packed_size(count, bits)
        torch.testing.assert_close(unpack_bits(packed, bits, count), codes)


@pytest.mark.parametrize("bits", [1, 3, 8, 13, 16])
def test_layout_matches_numpy_little_endian_bit_stream(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (101,))
    stream = ((codes.numpy()[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    expected = np.packbits(stream, bitorder="little")
    np.testing.assert_array_equal(pack_bits(codes, bits).numpy(), expected)


def test_small_known_example() -> None:
    # codes 1, 2, 3 at 2 bits: stream (LSB first) 1 0 | 0 1 | 1 1 -> 0b00111001
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([0xABC]), 12).tolist() == [0xBC, 0x0A]


def test_extremes_and_shapes() -> None:
    codes = torch.tensor([[0, 65535], [65535, 0]])
    packed = pack_bits(codes, 16)
    assert unpack_bits(packed, 16, 4).view(2, 2).tolist() == codes.tolist()
    small = torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8)
    assert unpack_bits(pack_bits(small, 1), 1, 5).tolist() == small.tolist()


@pytest.mark.parametrize("bits", [3, 5, 16])
def test_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, bits: int) -> None:
    monkeypatch.setattr(packing, "_CHUNK", 16)  # many chunks on a small input
    codes = torch.randint(0, 1 << bits, (173,))
    packed = pack_bits(codes, bits)
    monkeypatch.setattr(packing, "_CHUNK", 1 << 20)
    assert torch.equal(packed, pack_bits(codes, bits))
    monkeypatch.setattr(packing, "_CHUNK", 24)
    torch.testing.assert_close(unpack_bits(packed, bits, 173), codes)


def test_errors() -> None:
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="does not fit"):
        pack_bits(torch.tensor([-1]), 4)
    for bits in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="bits="):
            pack_bits(torch.tensor([0]), bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer codes"):
        pack_bits(torch.tensor([0.0]), 4)
    with pytest.raises(ValueError, match="expected 2 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 4)
    with pytest.raises(ValueError, match="uint8"):
        unpack_bits(torch.zeros(2, dtype=torch.int64), 4, 4)
