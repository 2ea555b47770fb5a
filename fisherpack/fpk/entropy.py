"""Static-model rANS entropy coding of small-alphabet symbol streams (spec: docs/FORMAT.md, "rANS").

A stream codes ``n`` symbols from ``[0, A)`` with a frequency table that is stored in front of it:

- frequencies ``f[s]`` sum to exactly ``M = 2**p`` (precision ``p`` in 8..16), ``f[s] >= 1`` for
  every symbol that occurs; ``start[s] = f[0] + ... + f[s-1]``;
- the state ``x`` is 32 bits and stays in ``[L, 2**32)`` with ``L = 2**16``; renormalisation moves
  16-bit words. The encoder starts at ``x = L`` and codes the symbols last to first:
  ``if x >= f[s] * 2**(32-p): emit x & 0xFFFF; x >>= 16`` then
  ``x = (x // f[s]) * M + x % f[s] + start[s]``;
- rANS data = final state (u32 LE) + the emitted words (u16 LE) in reverse order of emission, which
  is the order the decoder reads them. The decoder runs first to last:
  ``slot = x % M; s = symbol owning slot; x = f[s] * (x >> p) + slot - start[s];
  if x < L: x = (x << 16) | next word``, and must end with ``x == L`` and no words left — a
  check that catches almost any corruption.

Serialized stream = table + rANS data. Table = u8 ``p``, varint ``A``, then the frequencies of
symbols ``0..A-1`` as varints, except that a zero frequency is followed by a varint count of
*further* zeros (runs of unused symbols cost two bytes). ``n`` is not stored: the caller knows it.
An empty stream (``n == 0``) is zero bytes.

Anti-bomb: a stream may declare at most :data:`MAX_SYMBOLS_PER_BYTE` symbols per byte of rANS data,
so decoding work and memory are bounded by the file size; :func:`encode_stream` returns None when
its output would break that rule, and the caller stores the stream another way.
"""

from __future__ import annotations

import array
import heapq
import math
import sys

import numpy as np

from ..errors import FormatError
from .bits import read_varint, write_varint

__all__ = [
    "MIN_PRECISION",
    "MAX_PRECISION",
    "MAX_ALPHABET",
    "MAX_SYMBOLS_PER_BYTE",
    "RANS_L",
    "normalize_counts",
    "choose_precision",
    "ideal_bits",
    "write_table",
    "read_table",
    "rans_encode",
    "rans_decode",
    "encode_stream",
    "decode_stream",
]

MIN_PRECISION, MAX_PRECISION = 8, 16
MAX_ALPHABET = 1 << 16
MAX_SYMBOLS_PER_BYTE = 64
RANS_L = 1 << 16


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


def choose_precision(counts: np.ndarray) -> int:
    """Precision with the smallest estimated stream size: table bytes + 4 + coded bits rounded up to
    whole 16-bit words; ties go to the lower precision. An encoder choice: decoders accept any 8..16.
    """
    c = np.asarray(counts, dtype=np.int64)
    lowest = max(MIN_PRECISION, (int((c > 0).sum()) - 1).bit_length())
    best = None
    for p in range(lowest, MAX_PRECISION + 1):
        f = normalize_counts(c, p)
        size = len(write_table(f, p)) + 4 + 2 * math.ceil(_coded_bits(c, f, p) / 16)
        if best is None or size < best[0]:
            best = (size, p)
    return best[1]


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


def read_table(data: bytes | memoryview, max_alphabet: int) -> tuple[np.ndarray, int, int]:
    """Parse a table at the start of ``data``; return ``(freqs of length A, precision, bytes read)``.

    FormatError unless ``8 <= p <= 16``, ``1 <= A <= max_alphabet`` and the frequencies sum to 2**p.
    """
    if len(data) < 1:
        raise FormatError("entropy-coded stream is missing its frequency table")
    precision = data[0]
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise FormatError(f"entropy-coded stream has precision {precision}, must be 8..16")
    alphabet, pos = read_varint(data, 1)
    if not 1 <= alphabet <= max_alphabet:
        raise FormatError(f"entropy-coded stream has alphabet size {alphabet}, must be 1..{max_alphabet}")
    freqs = np.zeros(alphabet, dtype=np.int64)
    i, total, m = 0, 0, 1 << precision
    while i < alphabet:
        f, pos = read_varint(data, pos)
        if f == 0:
            run, pos = read_varint(data, pos)
            i += 1 + run
            continue
        total += f
        if total > m:
            raise FormatError("entropy-coded stream: frequencies sum to more than 2**precision")
        freqs[i] = f
        i += 1
    if i != alphabet or total != m:
        raise FormatError("entropy-coded stream: bad frequency table (runs overflow or sum is not 2**precision)")
    return freqs, precision, pos


def rans_encode(symbols: np.ndarray, freqs: np.ndarray, precision: int) -> bytes:
    """rANS data (u32 state + u16 words, little-endian) for ``symbols``; every symbol needs ``freqs > 0``."""
    f = np.asarray(freqs, dtype=np.int64)
    syms = np.asarray(symbols).reshape(-1)
    if syms.size and (int(syms.max()) >= f.size or np.any(f[syms] == 0)):
        raise ValueError("rans_encode: a symbol has no frequency")
    # Per symbol (f, start, limit): renormalise before coding s if x >= limit = f * 2**(32-p). One
    # tuple lookup per symbol is the cheapest form of this loop in CPython.
    table = list(zip(f.tolist(), (np.cumsum(f) - f).tolist(), (f << (32 - precision)).tolist()))
    x, words = RANS_L, []
    emit = words.append
    for fs, cs, limit in map(table.__getitem__, reversed(syms.tolist())):
        if x >= limit:  # once is enough: afterwards x < 2**16 <= limit
            emit(x & 0xFFFF)
            x >>= 16
        x = ((x // fs) << precision) + x % fs + cs
    words.reverse()
    return x.to_bytes(4, "little") + np.asarray(words, dtype="<u2").tobytes()


def rans_decode(data: bytes | memoryview, freqs: np.ndarray, precision: int, count: int) -> np.ndarray:
    """Decode ``count`` symbols from rANS data: (count,) uint16. FormatError if corrupt or short.

    Memory is 2 bytes per symbol and per word (compact arrays, not lists of Python ints), so a
    stream that declares many symbols costs no more than its output.
    """
    if len(data) < 4 or len(data) % 2:
        raise FormatError(f"rANS data is {len(data)} bytes; it must be a 4-byte state plus 2-byte words")
    words = array.array("H", bytes(data[4:]))
    if sys.byteorder == "big":
        words.byteswap()  # stored little-endian
    if len(words) > count:  # each symbol reads at most one word: some could never be read
        raise FormatError("rANS data is corrupt: it has more words than its symbols can read")
    f = np.asarray(freqs, dtype=np.int64)
    sym = np.repeat(np.arange(f.size, dtype=np.uint16), f)  # (2**p,) slot -> symbol
    start = np.cumsum(f) - f
    slot_freq = f[sym].tolist()
    slot_bias = (np.arange(sym.size) - start[sym]).tolist()  # slot - start[symbol of slot]
    x = int.from_bytes(bytes(data[:4]), "little")
    if x < RANS_L:
        raise FormatError("rANS data is corrupt: initial state below 2**16")
    word_iter = iter(words)
    mask, slots, next_word = (1 << precision) - 1, array.array("H"), word_iter.__next__
    record = slots.append  # slots now, symbols afterwards in one numpy gather
    try:
        for _ in range(count):
            slot = x & mask
            record(slot)
            x = slot_freq[slot] * (x >> precision) + slot_bias[slot]
            if x < RANS_L:  # one word always suffices: x >= 1 before it
                x = (x << 16) | next_word()
    except StopIteration:
        raise FormatError("rANS data is corrupt: it ends before all symbols are decoded") from None
    if x != RANS_L or next(word_iter, None) is not None:
        raise FormatError("rANS data is corrupt: final state check failed")
    idx, out = np.frombuffer(slots, dtype=np.uint16), np.empty(count, dtype=np.uint16)
    for i in range(0, count, 1 << 20):  # in chunks: numpy widens an index array to 8 bytes per entry
        out[i : i + (1 << 20)] = sym[idx[i : i + (1 << 20)]]
    return out


def encode_stream(symbols: np.ndarray, alphabet: int, budget: int | None = None) -> bytes | None:
    """Table + rANS data for ``symbols`` in ``[0, alphabet)``; ``b""`` if there are none.

    Returns None when the result would hold more than 64 symbols per byte of rANS data (the decoder
    would refuse it) or, with ``budget``, when the ideal entropy already needs ``>= budget`` bytes (so
    the slow coding loop is skipped when the caller's alternative is certainly at least as small).
    """
    syms = np.asarray(symbols).reshape(-1)
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet must be 1..{MAX_ALPHABET}")
    if syms.size == 0:
        return b""
    if syms.dtype.kind not in "ui" or int(syms.min()) < 0 or int(syms.max()) >= alphabet:
        raise ValueError("symbols must be integers in [0, alphabet)")
    counts = np.bincount(syms.astype(np.int64), minlength=alphabet)
    if budget is not None and ideal_bits(counts) / 8 >= budget:
        return None
    precision = choose_precision(counts)
    freqs = normalize_counts(counts, precision)
    data = rans_encode(syms, freqs, precision)
    if syms.size > MAX_SYMBOLS_PER_BYTE * len(data):
        return None
    return write_table(freqs, precision) + data


def decode_stream(data: bytes | memoryview, count: int, alphabet: int) -> np.ndarray:
    """Inverse of :func:`encode_stream` for a stream of exactly ``count`` symbols: (count,) uint16.

    FormatError if the table is invalid, a symbol is ``>= alphabet``, the stream declares more than
    64 symbols per byte of rANS data, or the rANS data is corrupt.
    """
    if count == 0:
        if len(data):
            raise FormatError("entropy-coded stream of 0 symbols must be empty")
        return np.zeros(0, dtype=np.uint16)
    freqs, precision, pos = read_table(data, alphabet)
    rans = memoryview(data)[pos:]
    if count > MAX_SYMBOLS_PER_BYTE * len(rans):
        raise FormatError(
            f"entropy-coded stream declares {count} symbols in {len(rans)} bytes "
            f"(more than {MAX_SYMBOLS_PER_BYTE} per byte); refusing to decode"
        )
    return rans_decode(rans, freqs, precision, count)
