"""Frequency tables of the rANS streams (spec: docs/FORMAT.md, "rANS"): counts normalized to a
power-of-two total, the precision that makes a stream smallest, and the table's serialized form.

Table = u8 precision ``p``, varint alphabet size ``A``, then the frequencies of symbols ``0..A-1``
as varints, except that a zero frequency is followed by a varint count of *further* zeros (runs of
unused symbols cost two bytes). Parsing is linear in the table's bytes, whatever ``A`` it declares.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ..errors import FormatError
from .bits import read_varint, write_varint

__all__ = ["MIN_PRECISION", "MAX_PRECISION", "MAX_ALPHABET", "normalize_counts", "ideal_bits", "choose_precision",
           "precisions", "write_table", "read_table", "read_table_lists"]  # fmt: skip

MIN_PRECISION, MAX_PRECISION = 8, 16
MAX_ALPHABET = 1 << 16


def normalize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies summing to exactly ``2**precision``, ``>= 1`` wherever ``counts > 0``.

    Deterministic integer algorithm: ``f = floor(c * M / total)``, raised to 1 for present symbols;
    a shortfall goes +1 each to the symbols with the largest remainders ``c * M mod total`` (ties:
    lower symbol first; raised symbols excluded); an excess (many rare symbols raised to 1) is taken
    -1 at a time from the symbol with ``f > 1`` whose decrement costs least, ranked by
    ``c / (f - 1/2)`` (ties: lower symbol first), which approximates the loss ``c * ln(f / (f-1))``.
    """
    c = np.asarray(counts).reshape(-1)
    if c.dtype.kind not in "ui" or (c.size and int(c.min()) < 0):
        raise ValueError("counts must be non-negative integers")
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be {MIN_PRECISION}..{MAX_PRECISION}, got {precision}")
    c = c.astype(np.int64)
    total, m = int(c.sum()), 1 << precision
    present = c > 0
    if total == 0 or int(present.sum()) > m:
        raise ValueError(f"need 1..{m} distinct symbols for precision {precision}")
    if total >= 1 << 46:  # keeps c * M below 2**62 in int64
        raise ValueError("too many symbols in one stream")
    f, rem = np.divmod(c * m, total)
    raised = present & (f == 0)
    f[raised] = 1
    diff = m - int(f.sum())
    if diff > 0:
        cand = np.flatnonzero(present & ~raised)
        order = cand[np.lexsort((cand, -rem[cand]))]  # largest remainder first, then lower index
        f[order[:diff]] += 1
    elif diff < 0:
        heap = [(int(c[s]) / (int(f[s]) - 0.5), int(s)) for s in np.flatnonzero(f > 1)]
        heapq.heapify(heap)
        for _ in range(-diff):
            _, s = heapq.heappop(heap)
            f[s] -= 1
            if f[s] > 1:
                heapq.heappush(heap, (int(c[s]) / (int(f[s]) - 0.5), s))
    return f


def ideal_bits(counts: np.ndarray) -> float:
    """Empirical entropy of the counts, in bits: ``sum c * log2(total / c)``."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    return float(np.sum(c * np.log2(c.sum() / c))) if c.size else 0.0


def _coded_bits(counts: np.ndarray, freqs: np.ndarray, precision: int) -> float:
    used = counts > 0
    return float(np.sum(counts[used] * (precision - np.log2(freqs[used]))))


def choose_precision(counts: np.ndarray, version: int = 2) -> int:
    """Precision with the smallest estimated stream size: table bytes + coded bits rounded up to
    whole words (version 2: 32-bit words; version 1: a 4-byte state plus 16-bit words); ties go to
    the lower precision. An encoder choice: decoders accept any 8..16.
    """
    c = np.asarray(counts, dtype=np.int64)
    lowest = max(MIN_PRECISION, (int((c > 0).sum()) - 1).bit_length())
    word, fixed = (32, 0) if version == 2 else (16, 4)
    best = None
    for p in range(lowest, MAX_PRECISION + 1):
        f = normalize_counts(c, p)
        size = len(write_table(f, p)) + fixed + word // 8 * math.ceil(_coded_bits(c, f, p) / word)
        if best is None or size < best[0]:
            best = (size, p)
    return best[1]


def precisions(counts: np.ndarray) -> range:
    """Every precision a table of these counts can have."""
    return range(max(MIN_PRECISION, (int((counts > 0).sum()) - 1).bit_length()), MAX_PRECISION + 1)


def write_table(freqs: np.ndarray, precision: int) -> bytes:
    """Serialize a frequency table; the alphabet size written is the last used symbol + 1."""
    f = np.asarray(freqs, dtype=np.int64)
    if int(f.sum()) != 1 << precision:
        raise ValueError("frequencies must sum to 2**precision")
    used = np.flatnonzero(f)
    fl = f[: int(used[-1]) + 1].tolist()
    out = bytearray([precision]) + write_varint(len(fl))
    i = 0
    while i < len(fl):
        if fl[i]:
            out += write_varint(fl[i])
            i += 1
        else:
            run = 0
            while fl[i + 1 + run] == 0:  # the last entry is nonzero, so this stops
                run += 1
            out += write_varint(0) + write_varint(run)
            i += 1 + run
    return bytes(out)


def read_table(data: bytes | memoryview, max_alphabet: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Parse a table at the start of ``data``: ``(symbols, freqs, precision, bytes read)`` where
    ``symbols`` (k,) uint16 are the symbols of nonzero frequency, ascending, and ``freqs`` (k,) int64
    their frequencies. Work and memory are linear in the table's bytes, whatever ``A`` it declares.

    FormatError unless ``8 <= p <= 16``, ``1 <= A <= max_alphabet`` and the frequencies sum to 2**p.
    """
    symbols, freqs, precision, pos = read_table_lists(data, max_alphabet)
    return np.asarray(symbols, dtype=np.uint16), np.asarray(freqs, dtype=np.int64), precision, pos


def read_table_lists(data: bytes | memoryview, max_alphabet: int) -> tuple[list[int], list[int], int, int]:
    """:func:`read_table` with Python lists: a file may hold thousands of tiny streams, and two
    arrays per table cost more than the rest of decoding a one-symbol stream."""
    if len(data) < 1:
        raise FormatError("entropy-coded stream is missing its frequency table")
    precision = data[0]
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise FormatError(f"entropy-coded stream has precision {precision}, must be 8..16")
    alphabet, pos = read_varint(data, 1)
    if not 1 <= alphabet <= min(max_alphabet, MAX_ALPHABET):
        raise FormatError(f"entropy-coded stream has alphabet size {alphabet}, must be 1..{max_alphabet}")
    symbols, freqs = [], []
    i, total, m = 0, 0, 1 << precision
    end = len(data)
    while i < alphabet:
        if pos < end and data[pos] < 0x80:  # a one-byte varint (most of them): no call
            f, pos = data[pos], pos + 1
        else:
            f, pos = read_varint(data, pos)
        if f == 0:
            run, pos = read_varint(data, pos)
            i += 1 + run
            continue
        total += f
        if total > m:
            raise FormatError("entropy-coded stream: frequencies sum to more than 2**precision")
        symbols.append(i)
        freqs.append(f)
        i += 1
    if i != alphabet or total != m:
        raise FormatError("entropy-coded stream: bad frequency table (runs overflow or sum is not 2**precision)")
    return symbols, freqs, precision, pos
