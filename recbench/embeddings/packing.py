"""Dense bit packing of small non-negative integer codes (scalar-quantization levels, PQ codes).

Why: a method's serving size counts ``b`` bits per code, so the serving artifact must store codes in
exactly that many bits, not in a whole byte or int64 each. ``pack_bits`` writes ``count`` codes of
``bits`` bits into ``ceil(count * bits / 8)`` bytes; the only overhead is the padding of the last byte.

Layout (little-endian at the bit level, like numpy's ``packbits(bitorder="little")``): code ``i``
occupies stream bits ``i*bits .. i*bits+bits-1``, least significant bit first, and stream bit ``p``
lives in byte ``p // 8`` at bit ``p % 8`` (value ``1 << (p % 8)``). Unused high bits of the last byte
are zero.

Both directions are vectorised (shifts and sums over a ``(codes, bits)`` bit matrix); large inputs are
processed in chunks of whole bytes so the temporary bit matrix stays small, never per element.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

MAX_BITS = 16
#: Codes handled per chunk; a multiple of 8 so every chunk starts on a byte boundary.
_CHUNK = 1 << 20


def packed_size(count: int, bits: int) -> int:
    """Bytes used by ``count`` codes of ``bits`` bits: ``ceil(count * bits / 8)``."""
    bits = _check_bits(bits)
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    return (count * bits + 7) // 8


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer ``codes`` (any shape, read in row-major order) at ``bits`` bits each.

    Returns a 1-D ``uint8`` tensor of ``ceil(codes.numel() * bits / 8)`` bytes on the codes' device.
    Raises ``ValueError`` for ``bits`` outside 1..16, non-integer codes, or codes outside
    ``0 .. 2**bits - 1`` (silently truncating them would corrupt the served table).
    """
    bits = _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"pack_bits needs integer codes, got dtype {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int64)
    count = flat.numel()
    out = torch.empty(packed_size(count, bits), dtype=torch.uint8, device=flat.device)
    if count == 0:
        return out
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high >= 1 << bits:
        bad = low if low < 0 else high
        raise ValueError(f"code {bad} does not fit in {bits} bits (allowed 0..{(1 << bits) - 1})")
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int64)
    weights = torch.tensor([1 << k for k in range(8)], device=flat.device, dtype=torch.int64)
    for start in range(0, count, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        stream = ((chunk.unsqueeze(1) >> shifts) & 1).reshape(-1)  # bit stream, LSB first
        pad = (-stream.numel()) % 8  # only the last chunk can be short of a whole byte
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        packed = (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)
        first = start * bits // 8
        out[first : first + packed.numel()] = packed
    return out


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of ``pack_bits``: the first ``count`` codes of ``bits`` bits as a 1-D int64 tensor.

    ``packed`` must hold exactly ``ceil(count * bits / 8)`` bytes, so a size mismatch between the
    artifact and its metadata is caught instead of decoding garbage.
    """
    bits = _check_bits(bits)
    count = operator.index(count)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    packed = packed.reshape(-1)
    expected = packed_size(count, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"{packed.numel()} packed bytes cannot hold exactly {count} codes of {bits} bits "
            f"(expected {expected} bytes)"
        )
    out = torch.empty(count, dtype=torch.int64, device=packed.device)
    if count == 0:
        return out
    bit_shifts = torch.arange(8, device=packed.device, dtype=torch.int64)
    weights = torch.tensor([1 << k for k in range(bits)], device=packed.device, dtype=torch.int64)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first = start * bits // 8
        chunk = packed[first : first + (n * bits + 7) // 8].to(torch.int64)
        stream = ((chunk.unsqueeze(1) >> bit_shifts) & 1).reshape(-1)[: n * bits]
        out[start : start + n] = (stream.reshape(n, bits) * weights).sum(1)
    return out


def _check_bits(bits: int) -> int:
    """``bits`` as a Python int in 1..16 (numpy and 0-d integer tensors accepted), else ValueError."""
    try:
        value = operator.index(bits)
    except TypeError:
        value = None
    if isinstance(bits, bool) or value is None or not 1 <= value <= MAX_BITS:
        raise ValueError(f"bits={bits!r} must be an int in 1..{MAX_BITS}")
    return value
