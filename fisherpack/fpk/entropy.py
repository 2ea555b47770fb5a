"""Static-model rANS entropy coding of small-alphabet symbol streams (spec: docs/FORMAT.md, "rANS").

A stream codes ``n`` symbols from ``[0, A)`` with a frequency table that is stored in front of it:
frequencies ``f[s]`` sum to exactly ``M = 2**p`` (precision ``p`` in 8..16), ``f[s] >= 1`` for every
symbol that occurs (the tables are freqs.py's). Serialized stream = table + rANS data. ``n`` is not
stored: the caller knows it. An empty stream (``n == 0``) is zero bytes.

The rANS data depends on the file's format version (the coders themselves are in rans_py.py):

- version 2: 64-bit state starting and ending at 2**16, 32-bit little-endian words, the table's
  frequencies scaled to 24 bits;
  coded natively by ``constriction`` (Rust) when it is installed, else by the pure-Python coder,
  which gives the same bytes (tests hold the two to each other); decoded by fisherpack's own C
  decoder (``_native.c``) when its optional build succeeded, about 2.7 times faster than
  constriction on a large stream (it looks a slot up in a small table instead of searching, and
  writes symbols, not table indices), 4 times with a tensor's two streams in one loop;
- version 1 (fisherpack 0.1): 32-bit state, 16-bit words; decoded in Python to read old files.

Bounded work: a stream may declare at most :data:`MAX_SYMBOLS_PER_BYTE` symbols per byte (version 2:
of the whole stream; version 1: of its rANS data), and decoding builds tables only of the symbols
the table lists (never ``2**p`` entries), so a file's decoding costs time and memory linear in its
size. :func:`encode_stream` returns None when its output would break the rule, and the caller
stores the stream another way.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import FormatError
from . import rans_py
from .freqs import (
    MAX_ALPHABET,
    MAX_PRECISION,
    MIN_PRECISION,
    choose_precision,
    ideal_bits,
    normalize_counts,
    precisions,
    read_table,
    read_table_lists,
    write_table,
)

try:  # the native coder; without it the pure-Python coder writes and reads the same bytes
    import constriction  # its submodules are attributes of the extension, not importable modules

    _Categorical, _AnsCoder = constriction.stream.model.Categorical, constriction.stream.stack.AnsCoder
except ImportError:  # pragma: no cover - tests switch it off by setting _AnsCoder to None
    _Categorical = _AnsCoder = None
try:  # the optional C decoder (setup.py); tests switch it off by setting _native to None
    from . import _native
except ImportError:  # pragma: no cover - a build without a C compiler
    _native = None

__all__ = [
    "MIN_PRECISION",
    "MAX_PRECISION",
    "MAX_ALPHABET",
    "MAX_SYMBOLS_PER_BYTE",
    "STREAM_VERSIONS",
    "native",
    "normalize_counts",
    "choose_precision",
    "ideal_bits",
    "write_table",
    "read_table",
    "encode_stream",
    "decode_stream",
]

MAX_SYMBOLS_PER_BYTE = 64
STREAM_VERSIONS = (1, 2)
_CHUNK = 1 << 20  # symbols per call into the native coder: bounds its int32 scratch to 4 MiB
_TRY_ALL = 1 << 16  # streams of at most this many symbols are coded at every precision (see encode_stream)
_START = np.array([rans_py.V2_START], dtype=np.uint32)  # the coder's state when it holds no words


def native() -> bool:
    """Whether the native (constriction) coder is in use."""
    return _AnsCoder is not None


def native_decoder() -> str:
    """Which version-2 decoder reads files: "c" (fisherpack's own), "constriction" or "python"."""
    return "c" if _native is not None else "constriction" if _AnsCoder is not None else "python"


@functools.lru_cache(maxsize=256)
def _model(freqs: tuple[int, ...], precision: int):
    """constriction's model of a sparse table; cached, so that a file of many streams with one table
    builds it once. ``perfect=True`` quantizes the dyadic probabilities ``f / 2**p`` to 24 bits
    exactly (``f * 2**(24-p)``), which is what makes its bytes the spec's (tests check this)."""
    return _Categorical(np.asarray(freqs, dtype=np.float64) / (1 << precision), perfect=True)


def _encode_v2(syms: np.ndarray, index: np.ndarray, freqs: np.ndarray, precision: int) -> bytes:
    """Version-2 rANS data of ``syms`` (``index`` maps a symbol to its place in the sparse table
    ``freqs``); a one-symbol table codes to zero bytes."""
    if freqs.size == 1:
        return b""
    if _AnsCoder is None:
        words = rans_py.encode_v2(index[syms].tolist(), freqs.tolist(), precision)
        return _trim(np.asarray(words, dtype="<u4").tobytes())
    coder, model = _AnsCoder(_START), _model(tuple(freqs.tolist()), precision)
    for end in range(syms.size, 0, -_CHUNK):  # a stack: the last chunk goes in first
        coder.encode_reverse(index[syms[max(0, end - _CHUNK) : end]], model)
    return _trim(coder.get_compressed().astype("<u4").tobytes())


def _trim(data: bytes) -> bytes:
    """Drop the zero high bytes of the last word (it is never zero), so a file holds no byte that
    carries no information; the reader pads them back."""
    return data.rstrip(b"\x00") if data else data


def _check_v2_data(data: memoryview, entries: int) -> None:
    """The checks of version-2 rANS data before decoding it (both decoders make them)."""
    if len(data) and data[-1] == 0:
        raise FormatError("rANS data is corrupt: its last byte is zero")
    if entries == 1 and len(data):
        raise FormatError("rANS data is corrupt: a one-symbol stream has no data")


def _decode_v2_c(data: memoryview, symbols: list[int], freqs: list[int], precision: int, count: int) -> np.ndarray:
    """(count,) symbols from version-2 rANS data by the C decoder: the same checks and errors as
    :func:`_decode_v2`."""
    _check_v2_data(data, len(freqs))
    if len(freqs) == 1:
        return np.full(count, symbols[0], dtype=np.uint16)
    out = np.empty(count, dtype=np.uint16)
    if _native.rans_v2(data, freqs, symbols, precision, out):
        raise FormatError("rANS data is corrupt: final state check failed")
    return out


def _decode_v2(data: memoryview, freqs: list[int], precision: int, count: int) -> np.ndarray:
    """(count,) table indices from version-2 rANS data; FormatError if it is corrupt."""
    _check_v2_data(data, len(freqs))
    if len(freqs) == 1:
        return np.zeros(count, dtype=np.uint16)
    padded = bytes(data) + bytes(-len(data) % 4)  # the last word's zero high bytes are not stored
    words = np.frombuffer(padded, dtype="<u4").astype(np.uint32, copy=False)  # a copy only on big-endian machines
    if _AnsCoder is None:
        return np.asarray(rans_py.decode_v2(words.tolist(), freqs, precision, count), dtype=np.uint16)
    coder, model = _AnsCoder(words), _model(tuple(freqs), precision)
    if count <= _CHUNK:  # one call (int32 out), then the uint16 the caller gets
        out = coder.decode(model, count).astype(np.uint16)
    else:
        out = np.empty(count, dtype=np.uint16)
        for i in range(0, count, _CHUNK):
            out[i : i + _CHUNK] = coder.decode(model, min(_CHUNK, count - i))
    rest = coder.get_compressed()  # must be the start state alone: every word read, state 2**16
    if rest.size != 1 or rest[0] != rans_py.V2_START:
        raise FormatError("rANS data is corrupt: final state check failed")
    return out


def _encode_v1(syms: np.ndarray, index: np.ndarray, freqs: np.ndarray, precision: int) -> bytes:
    state, words = rans_py.encode_v1(index[syms].tolist(), freqs.tolist(), precision)
    return state.to_bytes(4, "little") + np.asarray(words, dtype="<u2").tobytes()


def _decode_v1(data: memoryview, freqs: list[int], precision: int, count: int) -> np.ndarray:
    if len(data) < 4 or len(data) % 2:
        raise FormatError(f"rANS data is {len(data)} bytes; it must be a 4-byte state plus 2-byte words")
    state = int.from_bytes(bytes(data[:4]), "little")
    words = np.frombuffer(data[4:], dtype="<u2").tolist()
    return np.frombuffer(rans_py.decode_v1(state, words, freqs, precision, count), dtype=np.uint16)


def encode_stream(symbols: np.ndarray, alphabet: int, budget: int | None = None, version: int = 2) -> bytes | None:
    """Table + rANS data for ``symbols`` in ``[0, alphabet)``; ``b""`` if there are none.

    Returns None when the result would break the anti-bomb rule (the decoder would refuse it) or,
    with ``budget``, when the ideal entropy already needs ``>= budget`` bytes (so the coder is
    skipped when the caller's alternative is certainly at least as small). ``version`` is the
    file's format version (1 only to make test files of the old layout).
    """
    syms = np.asarray(symbols).reshape(-1)
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet must be 1..{MAX_ALPHABET}")
    if version not in STREAM_VERSIONS:
        raise ValueError(f"stream version must be one of {STREAM_VERSIONS}")
    if syms.size == 0:
        return b""
    if syms.dtype.kind not in "ui" or int(syms.min()) < 0 or int(syms.max()) >= alphabet:
        raise ValueError("symbols must be integers in [0, alphabet)")
    counts = np.bincount(syms if syms.dtype.itemsize < 8 else syms.astype(np.int64), minlength=alphabet)
    if budget is not None and ideal_bits(counts) / 8 >= budget:
        return None
    best = None
    # Short streams (where a byte matters and coding is cheap) try every precision and keep the
    # smallest result, ties to the lower precision; long ones take choose_precision's estimate.
    short = version == 2 and syms.size <= _TRY_ALL
    for precision in precisions(counts) if short else [choose_precision(counts, version)]:
        freqs = normalize_counts(counts, precision)
        present = np.flatnonzero(freqs)
        index = np.zeros(alphabet, dtype=np.int32)
        index[present] = np.arange(present.size, dtype=np.int32)  # symbol -> its place in the sparse table
        table = write_table(freqs, precision)
        data = (_encode_v2 if version == 2 else _encode_v1)(syms, index, freqs[present], precision)
        if best is None or len(table) + len(data) < len(best[0]) + len(best[1]):
            best = (table, data)
    table, data = best
    if syms.size > MAX_SYMBOLS_PER_BYTE * (len(data) + (len(table) if version == 2 else 0)):
        return None
    return table + data


def _parts(data: bytes | memoryview, count: int, alphabet: int, version: int) -> tuple[list, list, int, memoryview]:
    """(symbols, frequencies, precision, rANS data) of a stream of ``count >= 1`` symbols, after the
    checks of its table and of the anti-bomb rule (FormatError)."""
    symbols, freqs, precision, pos = read_table_lists(data, alphabet)
    rans = memoryview(data)[pos:]
    bytes_counted = len(data) if version == 2 else len(rans)
    if count > MAX_SYMBOLS_PER_BYTE * bytes_counted:
        raise FormatError(
            f"entropy-coded stream declares {count} symbols in {bytes_counted} bytes "
            f"(more than {MAX_SYMBOLS_PER_BYTE} per byte); refusing to decode"
        )
    return symbols, freqs, precision, rans


def native_parts(data: bytes | memoryview, count: int, alphabet: int) -> tuple | None:
    """A version-2 stream of ``count >= 1`` symbols as the C decoder's arguments (rANS data,
    frequencies, symbols, precision), for a caller that decodes it together with other streams;
    None if the C decoder is not built, the stream fails a check :func:`decode_stream` makes before
    decoding, or its table has one symbol (nothing to decode). The caller then calls decode_stream,
    which says what is wrong, if anything."""
    if _native is None:
        return None
    try:
        symbols, freqs, precision, rans = _parts(data, count, alphabet, 2)
        _check_v2_data(rans, len(freqs))
    except FormatError:
        return None
    return None if len(freqs) == 1 else (rans, freqs, symbols, precision)


def decode_stream(data: bytes | memoryview, count: int, alphabet: int, version: int = 2) -> np.ndarray:
    """Inverse of :func:`encode_stream` for a stream of exactly ``count`` symbols: (count,) uint16.

    FormatError if the table is invalid, a symbol is ``>= alphabet``, the stream declares more than
    64 symbols per byte (the anti-bomb rule), or the rANS data is corrupt.
    """
    if count == 0:
        if len(data):
            raise FormatError("entropy-coded stream of 0 symbols must be empty")
        return np.zeros(0, dtype=np.uint16)
    if version not in STREAM_VERSIONS:
        raise ValueError(f"stream version must be one of {STREAM_VERSIONS}")
    symbols, freqs, precision, rans = _parts(data, count, alphabet, version)
    if version == 2 and _native is not None:
        return _decode_v2_c(rans, symbols, freqs, precision, count)
    idx = (_decode_v2 if version == 2 else _decode_v1)(rans, freqs, precision, count)
    dense = len(symbols) == symbols[-1] + 1  # a dense table: index == symbol
    return idx if dense else np.asarray(symbols, dtype=np.uint16)[idx]
