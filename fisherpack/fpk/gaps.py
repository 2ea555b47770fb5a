"""Sparse indices (the kept entries of a mask) as gaps, and the Exp-Golomb split of a gap.

``gap_0`` = index of the first kept entry, ``gap_i = p_i - p_(i-1) - 1``. Exp-Golomb split of a gap
``g``: bucket ``k = g.bit_length()`` and, for ``k >= 2``, the ``k - 1`` low bits ``g - 2**(k-1)`` as
extra bits, packed as a bit string (bits.py; ``k = 0`` means ``g = 0``, ``k = 1`` means ``g = 1``).
Decoding works in chunks of gaps, so a mask of tens of millions of entries needs little scratch;
:func:`exp_golomb_mask` runs in C (``_native.c``) when the optional build succeeded.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError
from .bits import (
    _CHUNK,
    _WINDOW_BITS,
    _as_unsigned,
    _byte_view,
    _words,
    bit_lengths,
    check_bit_stream,
    pack_varbits,
    unpack_varbits,
)

try:  # the optional C decoder (setup.py); tests switch it off by setting _native to None
    from . import _native
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None

# The largest mask the numpy decoder takes: its running sums stay under (2 * _CHUNK + 1) * numel,
# within int64. The C decoder leaves larger ones to it, which refuses them.
MAX_NUMEL = (1 << 46) - 1

__all__ = ["MAX_NUMEL", "mask_to_gaps", "gaps_to_mask", "exp_golomb_split", "exp_golomb_join", "exp_golomb_mask"]


def mask_to_gaps(mask: np.ndarray) -> np.ndarray:
    """(kept,) int64 gaps of a flat bool mask: non-kept entries before each kept one."""
    return np.diff(np.flatnonzero(mask), prepend=-1) - 1


def gaps_to_mask(gaps: np.ndarray, numel: int, what: str) -> np.ndarray:
    """(numel,) bool mask from gaps; FormatError if a gap is negative or they run past ``numel``."""
    g = np.asarray(gaps).reshape(-1)
    if g.dtype.kind not in "ui":
        g = g.astype(np.int64)
    if g.size and ((g.dtype.kind == "i" and int(g.min()) < 0) or int(g.max()) >= numel):
        raise FormatError(f"{what}: mask gaps run past the end of the tensor")
    return _fill_mask((g[i : i + _CHUNK] for i in range(0, g.size, _CHUNK)), numel, what)


def _fill_mask(chunks, numel: int, what: str) -> np.ndarray:
    """(numel,) bool mask from consecutive chunks of gaps, each in ``[0, 2 * numel)``. Chunk by
    chunk, so that the scratch stays small and in cache: whole-tensor int64 temporaries cost as
    much in page faults as in arithmetic."""
    if numel > MAX_NUMEL:
        raise FormatError(f"{what}: a tensor of {numel} entries is too large to decode")
    mask = np.zeros(numel + 1, dtype=bool)
    end = 0  # position of the last kept entry so far, plus 1
    for g in chunks:
        ends = np.add(g, 1, dtype=np.int64)
        np.cumsum(ends, out=ends)
        if end:
            ends += end
        end = int(ends[-1])
        if end > numel:
            raise FormatError(f"{what}: mask gaps run past the end of the tensor")
        mask[ends] = True
    return mask[1:]  # a view from the second byte: shifts the positions back by one at no cost


def exp_golomb_split(values: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(buckets ``k = bit_length``, extra bits packed MSB-first: ``k - 1`` low bits of each value with k >= 2)."""
    v = _as_unsigned(values, 64, "exp_golomb_split")
    k = bit_lengths(v)
    low = np.maximum(k - 1, 0).astype(np.uint64)
    return k, pack_varbits(v & ((np.uint64(1) << low) - np.uint64(1)), low)


def _checked_buckets(buckets: np.ndarray, extra: bytes | memoryview, what: str) -> tuple[np.ndarray, int]:
    """(buckets as (n,) uint8 or uint16, the largest) after checking that they are 0..63 and that ``extra``
    holds exactly their extra bits."""
    k = np.asarray(buckets).reshape(-1)
    if k.dtype.kind not in "ui":
        k = k.astype(np.int64)
    top = int(k.max()) if k.size else 0
    if top > 63 or (k.dtype.kind == "i" and k.size and int(k.min()) < 0):
        raise FormatError(f"{what}: Exp-Golomb bucket out of range 0..63")
    check_bit_stream(extra, int(k.sum(dtype=np.int64)) - np.count_nonzero(k), what)  # k - 1 bits for k >= 1
    return (k if k.dtype in (np.uint8, np.uint16) else k.astype(np.uint8)), top


def exp_golomb_join(buckets: np.ndarray, extra: bytes | memoryview, what: str) -> np.ndarray:
    """Inverse of :func:`exp_golomb_split` for buckets 0..63: (n,) uint64; ``extra`` must fit exactly."""
    k, top = _checked_buckets(buckets, extra, what)
    if top - 1 > _WINDOW_BITS:
        return unpack_varbits(extra, np.maximum(k, 1) - 1) | np.take(_TOP_BITS, k)
    out = np.empty(k.size, dtype=np.uint64)
    for i, values in zip(range(0, k.size, _CHUNK), _joined(k, _byte_view(extra))):
        out[i : i + _CHUNK] = values
    return out


def exp_golomb_mask(buckets: np.ndarray, extra: bytes | memoryview, numel: int, what: str) -> np.ndarray:
    """``gaps_to_mask(exp_golomb_join(buckets, extra, f"{what} mask extra bits"), numel, what)``: the
    same checks in the same order, without the whole-tensor arrays of gaps in between."""
    k, top = _checked_buckets(buckets, extra, f"{what} mask extra bits")
    if top > numel.bit_length():  # a value of bucket k is at least 2**(k-1), and below 2**k
        raise FormatError(f"{what}: mask gaps run past the end of the tensor")
    if _native is None or numel > MAX_NUMEL:
        return _fill_mask(_joined(k, _byte_view(extra)), numel, what)
    mask = np.zeros(numel, dtype=bool)
    if _native.eg_mask(np.ascontiguousarray(k), k.itemsize, extra, mask) >= 0:
        raise FormatError(f"{what}: mask gaps run past the end of the tensor")
    return mask


def _joined(k: np.ndarray, buf: np.ndarray):
    """Chunks of the values of buckets ``k`` (uint8 or uint16, each at most _WINDOW_BITS + 1), their extra bits
    read from ``buf``: (<= _CHUNK,) uint64 each. Lazy: a caller's checks between chunks come first."""
    pos = 0  # bit offset of the chunk's first extra bit
    for i in range(0, k.size, _CHUNK):
        kc = k[i : i + _CHUNK]
        low = np.maximum(kc, 1)
        low -= 1  # k - 1 extra bits for k >= 1, none for k = 0
        starts = np.cumsum(low, dtype=np.int64)
        starts -= low
        if pos:
            starts += pos
        pos = int(starts[-1]) + int(low[-1])
        yield _join_values(buf, starts, kc)


def _join_values(buf: np.ndarray, starts: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n,) uint64 values of buckets ``k`` (extra bits at bit offsets ``starts``, int64 ascending;
    overwritten: they are scratch)."""
    byte = starts >> 3
    first = int(byte[0])
    words = np.take(_words(buf, first, int(byte[-1])), byte - first if first else byte).astype(np.uint64)
    starts &= 7
    words <<= starts.view(np.uint64)  # the value's first extra bit is now bit 63
    # Put the implicit top bit above the k - 1 extra bits and shift down by 64 - k: 2**(k-1) + extra.
    # k = 0 shifts by 64, which gives 0 in numpy, as wanted.
    words >>= np.uint64(1)
    words |= np.uint64(1 << 63)
    words >>= np.subtract(64, k, dtype=np.uint64)
    return words


_TOP_BITS = np.array([0] + [1 << (k - 1) for k in range(1, 64)], dtype=np.uint64)  # bucket k -> 2**(k-1)
