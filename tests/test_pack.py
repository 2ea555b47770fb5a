"""Bit packing: exact round trips for every width, golden bytes, and a brute-force reference writer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fisherpack.errors import FormatError
from fisherpack.fpk.bits import (
    bit_lengths,
    check_bit_stream,
    pack_bits,
    pack_varbits,
    packed_size,
    read_varint,
    unpack_bits,
    unpack_varbits,
    write_varint,
)
from fisherpack.fpk.gaps import exp_golomb_join, exp_golomb_split, gaps_to_mask, mask_to_gaps


def reference_pack(values, widths) -> bytes:
    """Brute-force MSB-first bit writer, one bit at a time in pure Python: the oracle."""
    bits = []
    for v, w in zip(values, widths):
        bits.extend((int(v) >> (w - 1 - i)) & 1 for i in range(w))
    bits.extend([0] * (-len(bits) % 8))
    return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def random_values(rng, count, width):
    return rng.integers(0, 1 << width, size=count, dtype=np.uint64)


@pytest.mark.parametrize("width", range(1, 33))
@pytest.mark.parametrize("count", [0, 1, 7, 9, 1000, 1001])
def test_round_trip_every_width_and_odd_lengths(width, count):
    rng = np.random.default_rng(width * 10_000 + count)
    values = random_values(rng, count, width)
    if count:
        values[0] = (1 << width) - 1  # all ones: exercises the top bit
    data = pack_bits(values, width)
    assert len(data) == packed_size(count, width)
    assert data == reference_pack(values, [width] * count)
    out = unpack_bits(data, width, count)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, values)
    check_bit_stream(data, count * width, "test")  # padding is zero


def test_golden_bytes():
    assert pack_bits(np.array([1, 0, 1, 1, 0, 1, 0, 0, 1]), 1) == b"\xb4\x80"
    assert pack_bits(np.array([5, 3, 7]), 3) == bytes([0b10101111, 0b10000000])
    assert pack_bits(np.array([0xABC]), 12) == b"\xab\xc0"
    assert pack_bits(np.array([1, 2]), 32) == b"\x00\x00\x00\x01\x00\x00\x00\x02"
    assert pack_bits(np.array([], dtype=np.uint8), 5) == b""


def test_chunk_boundaries_match_reference():
    rng = np.random.default_rng(1)
    for width in (3, 7, 32):
        values = random_values(rng, 3 * 65536 + 5, width)  # crosses the internal chunk size
        data = pack_bits(values, width)
        np.testing.assert_array_equal(unpack_bits(data, width, values.size), values)
        for boundary in (65536, 2 * 65536):  # 8 values either side start and end on whole bytes
            lo, hi = (boundary - 8) * width // 8, (boundary + 8) * width // 8
            assert data[lo:hi] == reference_pack(values[boundary - 8 : boundary + 8], [width] * 16)


def test_unpack_at_bit_offset():
    rng = np.random.default_rng(2)
    values = random_values(rng, 100, 11)
    data = reference_pack([5, *values], [3] + [11] * 100)
    np.testing.assert_array_equal(unpack_bits(data, 11, 100, offset_bits=3), values)


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("count", [19, 4096, 4097])  # the short-stream product, its limit, the column passes
@pytest.mark.parametrize("offset", [0, 3])  # width 8 at offset 0: whole bytes
def test_unpack_of_narrow_widths_at_every_path_and_offset(width, count, offset):
    rng = np.random.default_rng(width * 100 + offset)
    values = random_values(rng, count, width)
    values[-1] = (1 << width) - 1
    data = reference_pack([5, *values], [offset, *[width] * count]) if offset else pack_bits(values, width)
    out = unpack_bits(data, width, count, offset_bits=offset)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, values)


def test_unpack_too_short_raises():
    data = pack_bits(np.arange(10), 4)
    with pytest.raises(FormatError, match="too short"):
        unpack_bits(data, 4, 11)
    with pytest.raises(FormatError, match="too short"):
        unpack_bits(data[:-1], 4, 10)


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([-1]), 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([1.0]), 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([1]), 33)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 2**64 - 1)), max_size=60))
def test_varbits_equal_reference(items):
    widths = np.array([w for w, _ in items], dtype=np.int64)
    values = np.array([v & ((1 << w) - 1) for w, v in items], dtype=np.uint64)
    data = pack_varbits(values, widths)
    assert data == reference_pack(values.tolist(), widths.tolist())
    np.testing.assert_array_equal(unpack_varbits(data, widths), values)


def test_varbits_across_chunks():
    rng = np.random.default_rng(3)
    widths = rng.integers(0, 65, size=200_003)
    values = rng.integers(0, 2**63, size=widths.size, dtype=np.uint64) >> (63 - widths).clip(0).astype(np.uint64)
    values[widths == 0] = 0
    data = pack_varbits(values, widths)
    assert len(data) == packed_size(int(widths.sum()), 1)
    np.testing.assert_array_equal(unpack_varbits(data, widths), values)
    with pytest.raises(FormatError):
        unpack_varbits(data[:-9], widths)


def test_check_bit_stream():
    check_bit_stream(b"\xf0", 4, "x")
    with pytest.raises(FormatError, match="padding"):
        check_bit_stream(b"\xf8", 4, "x")
    with pytest.raises(FormatError, match="exactly 1"):
        check_bit_stream(b"\xf0\x00", 4, "x")


def test_bit_lengths():
    values = [0, 1, 2, 3, 4, 255, 256, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
    assert bit_lengths(np.array(values, dtype=np.uint64)).tolist() == [v.bit_length() for v in values]


def test_gaps_and_exp_golomb_round_trip():
    rng = np.random.default_rng(4)
    mask = rng.random(10_000) < 0.05
    gaps = mask_to_gaps(mask)
    assert gaps.sum() + gaps.size == np.flatnonzero(mask)[-1] + 1
    np.testing.assert_array_equal(gaps_to_mask(gaps, mask.size, "m"), mask)
    k, extra = exp_golomb_split(gaps)
    assert k.tolist() == [int(g).bit_length() for g in gaps]
    np.testing.assert_array_equal(exp_golomb_join(k, extra, "m"), gaps)
    with pytest.raises(FormatError, match="past the end"):
        gaps_to_mask(gaps, int(np.flatnonzero(mask)[-1]), "m")
    with pytest.raises(FormatError):
        exp_golomb_join(k, extra + b"\x00", "m")


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint_golden(value, encoded):
    assert write_varint(value) == encoded
    assert read_varint(b"\x07" + encoded + b"\x07", 1) == (value, 1 + len(encoded))


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(value):
    data = write_varint(value)
    assert read_varint(data, 0) == (value, len(data))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "past the end"),
        (b"\x80\x80", "past the end"),
        (b"\xff" * 10 + b"\x01", "longer than 10"),
        (b"\xff" * 9 + b"\x02", "exceeds 64"),
        (b"\x80\x00", "minimal"),
    ],
)
def test_varint_malformed(data, message):
    with pytest.raises(FormatError, match=message):
        read_varint(data, 0)


def _reference_varbits(values, widths) -> bytes:
    """The bit matrix way: every value as 64 bits, keep the low `width` of each, pack the lot."""
    rows = np.unpackbits(np.asarray(values, dtype=">u8").view(np.uint8).reshape(-1, 8), axis=1)
    keep = np.arange(64)[None, :] >= (64 - np.asarray(widths))[:, None]
    return np.packbits(rows[keep]).tobytes()


def test_word_packing_equals_the_bit_matrix_across_chunk_boundaries():
    """Values are added into 64-bit words chunk by chunk; the bytes equal the bit-matrix packing,
    also when a chunk ends inside a word (more than 2**20 values)."""
    from fisherpack.fpk import bits as pack

    rng = np.random.default_rng(7)
    n = 16 * pack._CHUNK + 12345
    widths = rng.integers(0, 58, n)
    full = rng.integers(0, 2**63, n, dtype=np.uint64) | np.uint64(1 << 63)  # the top bits set too
    values = full & ((np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1))  # all bits of each width
    data = pack.pack_varbits(values, widths)
    assert data == _reference_varbits(values, widths)
    np.testing.assert_array_equal(pack.unpack_varbits(data, widths), values)
    fixed = rng.integers(0, 2**13, n)
    assert pack.pack_bits(fixed, 13) == _reference_varbits(fixed, np.full(n, 13))
