"""Bit packing: fixed- and variable-width unsigned integers and LEB128 varints (the gaps of sparse
indices are in gaps.py).

Conventions (docs/FORMAT.md, "Bit strings"):

- A bit string is read most significant bit first: bit ``i`` of the string is bit ``7 - i % 8``
  (counting from the least significant) of byte ``i // 8``.
- A value of width ``w`` takes ``w`` consecutive bits, its most significant bit first. Values follow
  each other with no padding; only the last byte is padded, with zero bits, and readers check that
  the padding is zero (:func:`check_bit_stream`) so every value has exactly one encoding.
- A width-0 value takes no bits and is 0.

Everything is vectorised with numpy and works in chunks, so packing tens of millions of values needs
a few megabytes of scratch memory beyond the input and output.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError

__all__ = [
    "pack_bits",
    "unpack_bits",
    "pack_varbits",
    "unpack_varbits",
    "packed_size",
    "check_bit_stream",
    "bit_lengths",
    "write_varint",
    "read_varint",
]

# Values per chunk. A multiple of 8, so a chunk of fixed-width values always fills whole bytes and
# the chunks' bytes can simply be concatenated. Scratch per chunk: 64 bytes per value at most.
_CHUNK = 1 << 16

_VARINT_MAX_BYTES = 10  # ceil(64 / 7): enough for any unsigned 64-bit value


def packed_size(count: int, width: int) -> int:
    """Bytes taken by ``count`` values of ``width`` bits each: ``ceil(count * width / 8)``."""
    return (count * width + 7) // 8


def _as_unsigned(values: np.ndarray, widths: int | np.ndarray, what: str) -> np.ndarray:
    """Check that ``values`` are integers in ``[0, 2**widths)`` and return them flat as uint64."""
    v = np.asarray(values).reshape(-1)
    if v.dtype.kind not in "uib":
        raise ValueError(f"{what}: values must be integers, got {v.dtype}")
    if v.size and v.dtype.kind == "i" and int(v.min()) < 0:
        raise ValueError(f"{what}: values must be non-negative")
    v = v.astype(np.uint64)
    # Shifting by the width leaves 0 exactly when the value fits (widths are at most 64; numpy's
    # shift by 64 is undefined, so split it as two shifts).
    w = np.asarray(widths, dtype=np.uint64)
    half = w // np.uint64(2)
    if v.size and np.any((v >> half) >> (w - half)):
        raise ValueError(f"{what}: a value does not fit its bit width")
    return v


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned integers ``< 2**width`` (width 1..32) MSB-first into ``packed_size(n, width)`` bytes."""
    if not 1 <= width <= 32:
        raise ValueError(f"pack_bits: width must be 1..32, got {width}")
    v = np.asarray(values).reshape(-1)
    # Scalar width: checking min and max avoids a full-size converted copy of a huge input.
    if v.dtype.kind not in "uib" or (v.size and (int(v.min()) < 0 or int(v.max()) >> width)):
        raise ValueError(f"pack_bits: values must be integers in [0, 2**{width})")
    step = 16 * _CHUNK
    chunks = (
        (v[i : i + step].astype(np.uint64), np.full(min(step, v.size - i), width)) for i in range(0, v.size, step)
    )
    return _pack_stream(chunks)


def _pack_stream(chunks) -> bytes:
    """Pack (values uint64, widths <= 57) chunks MSB-first into one bit string, zero-padded. Each
    value is added into the one or two big-endian 64-bit words its bits fall in (its bits are
    disjoint from every other value's, so adding is OR-ing); a partly filled word carries over."""
    parts, pending, bit = [], np.uint64(0), 0  # `bit` bits of `pending` are used
    for v, w in chunks:
        starts = bit + np.cumsum(w) - w  # bit offsets from the start of the pending word
        nbits = bit + int(w.sum())
        word = starts >> 6
        end = (starts & 63) + w  # where each value ends, counted from its first word's top bit
        over = end > 64  # the value runs into the next word
        words = np.zeros(nbits // 64 + 2, dtype=np.uint64)
        left = np.clip(64 - end, 0, 63).astype(np.uint64)
        right = np.clip(end - 64, 0, 63).astype(np.uint64)
        np.add.at(words, word, np.where(over, v >> right, v << left))
        np.add.at(words, word[over] + 1, v[over] << (128 - end[over]).astype(np.uint64))
        words[0] += pending
        parts.append(words[: nbits // 64].astype(">u8").tobytes())
        pending, bit = words[nbits // 64], nbits % 64
    parts.append(np.array([pending], dtype=">u8").tobytes()[: (bit + 7) // 8])
    return b"".join(parts)


def _byte_view(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def unpack_bits(data: bytes | memoryview, width: int, count: int, offset_bits: int = 0) -> np.ndarray:
    """Read ``count`` values of ``width`` bits (1..32) starting at bit ``offset_bits``; (count,) uint32.

    Raises FormatError if ``data`` holds fewer than ``offset_bits + count * width`` bits.
    """
    if not 1 <= width <= 32:
        raise ValueError(f"unpack_bits: width must be 1..32, got {width}")
    if count < 0 or offset_bits < 0:
        raise ValueError("unpack_bits: count and offset_bits must be non-negative")
    buf = _byte_view(data)
    need = offset_bits + count * width
    if need > 8 * buf.size:
        raise FormatError(f"bit stream too short: need {need} bits, have {8 * buf.size}")
    out = np.empty(count, dtype=np.uint32)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        first = offset_bits + start * width
        if width == 8 and not first & 7:  # whole bytes
            out[start : start + n] = buf[first >> 3 : (first >> 3) + n]
        elif width <= 8:  # from the unpacked bits: 3-10x faster than the windows
            bits = np.unpackbits(buf[first >> 3 : (first + n * width + 7) >> 3])
            columns = bits[first & 7 : (first & 7) + n * width].reshape(n, width)
            if n <= 4096:  # one product with the place values: fewer calls, for the many small streams
                out[start : start + n] = columns @ _PLACES[8 - width :]
                continue
            chunk = out[start : start + n]  # a pass per bit column: faster on long streams
            np.copyto(chunk, columns[:, 0])
            for j in range(1, width):
                chunk <<= 1
                chunk |= columns[:, j]
        else:
            out[start : start + n] = _read_windows(buf, first + np.arange(n, dtype=np.int64) * width, width)
    return out


_PLACES = (1 << np.arange(7, -1, -1)).astype(np.uint8)  # the place value of each bit of a byte, MSB first
_WINDOW_BITS = 57  # a value of up to 57 bits lies inside the 8 bytes that start at its first byte


def _words(buf: np.ndarray, first: int, last: int) -> np.ndarray:
    """(last - first + 1,) big-endian 64-bit words, word ``i`` made of bytes ``first + i .. first + i + 7``
    of ``buf`` (zero past its end): overlapping unaligned views of one zero-padded copy, no copy each."""
    window = buf[first : last + 8]
    padded = np.zeros(last - first + 8, dtype=np.uint8)
    padded[: window.size] = window
    return np.ndarray((last - first + 1,), dtype=">u8", buffer=padded, strides=(1,))


def _read_windows(buf: np.ndarray, starts: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
    """(n,) uint64 values of ``widths[i] <= 57`` bits (or all ``widths``) at bit offsets ``starts[i]`` (int64,
    ascending) of ``buf``: each read from the big-endian 64-bit word of the 8 bytes holding its first bit."""
    if not starts.size:
        return np.zeros(0, dtype=np.uint64)
    first = int(starts[0]) >> 3
    byte = starts >> 3
    words = np.take(_words(buf, first, int(byte[-1])), byte - first if first else byte).astype(np.uint64)
    # The value ends `(starts & 7) + width` bits into its word: shift it down to there, keep its bits.
    # A shift of 64 (width 0 at a byte boundary) gives 0 in numpy, and the width-0 mask is 0 anyway.
    byte <<= 3
    byte += 64
    byte -= starts
    byte -= widths
    words >>= byte.astype(np.uint64)
    words &= np.take(_LOW_MASKS, widths)
    return words


_LOW_MASKS = np.array([(1 << w) - 1 for w in range(65)], dtype=np.uint64)  # width -> its low-bits mask


def _width_mask(widths: np.ndarray) -> np.ndarray:
    """(n, 64) bool: True at the low ``widths[i]`` bit positions of a big-endian 64-bit row."""
    return np.arange(64)[None, :] >= (64 - widths)[:, None]


def _check_widths(widths: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(widths).reshape(-1)
    if w.dtype.kind not in "ui":
        raise ValueError(f"{what}: widths must be integers")
    w = w.astype(np.int64)
    if w.size and (int(w.min()) < 0 or int(w.max()) > 64):
        raise ValueError(f"{what}: widths must be 0..64")
    return w


def pack_varbits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Pack ``values[i]`` in ``widths[i]`` bits (0..64) each, MSB-first, no gaps; last byte zero-padded."""
    w = _check_widths(widths, "pack_varbits")
    v = _as_unsigned(values, w, "pack_varbits")
    if v.shape != w.shape:
        raise ValueError("pack_varbits: values and widths must have the same length")
    if not w.size or int(w.max()) <= _WINDOW_BITS:  # the common case: no (n, 64) bit matrix
        step = 16 * _CHUNK
        return _pack_stream((v[i : i + step], w[i : i + step]) for i in range(0, v.size, step))
    parts, carry = [], np.zeros(0, dtype=np.uint8)
    for start in range(0, v.size, _CHUNK):
        vc, wc = v[start : start + _CHUNK], w[start : start + _CHUNK]
        rows = np.unpackbits(vc.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)  # (n, 64)
        # Row-major boolean indexing keeps value order and MSB-first order within each value.
        bits = np.concatenate([carry, rows[_width_mask(wc)]])
        whole = bits.size - bits.size % 8  # variable widths: carry the bits of an unfinished byte
        parts.append(np.packbits(bits[:whole]).tobytes())
        carry = bits[whole:]
    parts.append(np.packbits(carry).tobytes())
    return b"".join(parts)


def unpack_varbits(data: bytes | memoryview, widths: np.ndarray, offset_bits: int = 0) -> np.ndarray:
    """Inverse of :func:`pack_varbits`: (n,) uint64. Raises FormatError if ``data`` is too short."""
    w = _check_widths(widths, "unpack_varbits")
    buf = _byte_view(data)
    need = offset_bits + int(w.sum())
    if need > 8 * buf.size:
        raise FormatError(f"bit stream too short: need {need} bits, have {8 * buf.size}")
    out = np.empty(w.size, dtype=np.uint64)
    pos = offset_bits
    for start in range(0, w.size, _CHUNK):
        wc = w[start : start + _CHUNK]
        nbits = int(wc.sum())
        if not wc.size or int(wc.max()) <= _WINDOW_BITS:  # the common case: no (n, 64) bit matrix
            starts = pos + np.cumsum(wc) - wc
            out[start : start + wc.size] = _read_windows(buf, starts, wc)
            pos += nbits
            continue
        bits = np.unpackbits(buf[pos // 8 : (pos + nbits + 7) // 8])[pos % 8 : pos % 8 + nbits]
        rows = np.zeros((wc.size, 64), dtype=np.uint8)
        rows[_width_mask(wc)] = bits
        out[start : start + wc.size] = np.packbits(rows, axis=1).view(">u8").reshape(wc.size)
        pos += nbits
    return out


def check_bit_stream(data: bytes | memoryview, nbits: int, what: str) -> None:
    """Require ``data`` to be exactly ``ceil(nbits / 8)`` bytes with zero padding bits, else FormatError."""
    expected = (nbits + 7) // 8
    if len(data) != expected:
        raise FormatError(f"{what}: stream is {len(data)} bytes, its encoding needs exactly {expected}")
    if nbits % 8 and data[-1] & ((1 << (8 - nbits % 8)) - 1):
        raise FormatError(f"{what}: nonzero padding bits at the end of a bit stream")


def bit_lengths(values: np.ndarray) -> np.ndarray:
    """Vectorised ``int.bit_length`` of unsigned integers: (n,) int64, 0 for 0."""
    v = _as_unsigned(values, 64, "bit_lengths")
    if not v.size or int(v.max()) < 1 << 53:  # exact in float64: the exponent is the bit length
        return np.frexp(v.astype(np.float64))[1].astype(np.int64)
    v = v.copy()
    out = np.zeros(v.size, dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):  # binary search on the position of the top set bit
        big = v >= np.uint64(1 << shift)
        out[big] += shift
        v[big] >>= np.uint64(shift)
    return out + (v > 0)


def write_varint(value: int) -> bytes:
    """LEB128 unsigned varint: 7 bits per byte, least significant group first, high bit = more follow."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint value must be in [0, 2**64), got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Read a varint at ``data[pos]``; return ``(value, position after it)``.

    FormatError if it runs past the end of ``data``, is longer than 10 bytes, exceeds 2**64 - 1 or
    is not minimal (a final 0x00 byte after others): one value, one encoding.
    """
    value = 0
    for i in range(_VARINT_MAX_BYTES):
        if pos + i >= len(data):
            raise FormatError("varint runs past the end of its stream")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise FormatError("varint is not minimally encoded")
            if value >= 1 << 64:
                raise FormatError("varint exceeds 64 bits")
            return value, pos + i + 1
    raise FormatError(f"varint longer than {_VARINT_MAX_BYTES} bytes")
