"""rANS entropy coding: frequency tables, exact round trips, golden bytes, size and corruption."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fisherpack.errors import FormatError
from fisherpack.fpk.entropy import (
    MAX_SYMBOLS_PER_BYTE,
    choose_precision,
    decode_stream,
    encode_stream,
    ideal_bits,
    normalize_counts,
    rans_decode,
    rans_encode,
    read_table,
    write_table,
)


def reference_rans_encode(symbols, freqs, precision) -> bytes:
    """rANS encoder written straight from docs/FORMAT.md, one step at a time: the oracle."""
    starts = [sum(freqs[:s]) for s in range(len(freqs))]
    x, emitted = 2**16, []
    for s in reversed(list(symbols)):
        if x >= freqs[s] * 2 ** (32 - precision):
            emitted.append(x % 2**16)
            x //= 2**16
        x = (x // freqs[s]) * 2**precision + x % freqs[s] + starts[s]
    words = b"".join(w.to_bytes(2, "little") for w in reversed(emitted))
    return x.to_bytes(4, "little") + words


def test_normalize_counts_sums_and_keeps_every_symbol():
    rng = np.random.default_rng(0)
    for precision in range(8, 17):
        counts = rng.geometric(0.05, size=300) * (rng.random(300) < 0.7)
        f = normalize_counts(counts, precision)
        assert f.sum() == 2**precision
        assert np.all((f > 0) == (counts > 0))


def test_normalize_counts_many_rare_symbols_take_from_the_frequent_one():
    counts = np.array([10**6] + [1] * 1000)
    f = normalize_counts(counts, 10)
    assert f.tolist() == [24] + [1] * 1000


def test_normalize_counts_exact_cases():
    assert normalize_counts(np.array([2, 2, 1]), 8).tolist() == [103, 102, 51]  # tie: lower symbol first
    assert normalize_counts(np.array([0, 5, 0]), 8).tolist() == [0, 256, 0]
    with pytest.raises(ValueError):
        normalize_counts(np.zeros(3, dtype=int), 8)
    with pytest.raises(ValueError):
        normalize_counts(np.ones(257, dtype=int), 8)  # more symbols than slots


def test_choose_precision_grows_with_stream_length():
    probs = np.array([0.6, 0.2, 0.1, 0.05, 0.03, 0.02])
    short, long = (
        choose_precision(np.round(probs * 50).astype(int)),
        choose_precision(np.round(probs * 10**6).astype(int)),
    )
    assert 8 <= short <= long <= 16
    assert choose_precision(np.ones(1000, dtype=int)) >= 10  # needs a slot per symbol


def test_golden_bytes():
    data = encode_stream(np.array([0, 1, 1, 0, 2]), 3)
    # table: precision 8, A = 3, frequencies 103 102 51; then the 4-byte state and no words
    assert data.hex() == "08036766330d6ac300"
    assert data[5:] == reference_rans_encode([0, 1, 1, 0, 2], [103, 102, 51], 8)
    assert encode_stream(np.zeros(10, dtype=int), 3).hex() == "0801800200000100"  # one symbol: state stays L


def test_table_zero_runs():
    f = np.zeros(300, dtype=np.int64)
    f[[0, 1, 150, 299]] = [100, 100, 50, 6]
    table = write_table(f, 8)
    assert table[:3] == bytes([8]) + b"\xac\x02"  # precision, A = 300
    assert table[3:5] == b"\x64\x64" and table[5:7] == b"\x00\x93"  # 100, 100, zero + 147 more zeros
    freqs, precision, used = read_table(table + b"rest", 300)
    assert precision == 8 and used == len(table) and freqs.tolist() == f.tolist()


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.geometric(0.3, size=5000) - 1,  # skewed
        lambda rng: rng.integers(0, 256, size=5000),  # uniform
        lambda rng: np.full(100, 7),  # single symbol
        lambda rng: rng.integers(0, 2, size=777),  # two symbols
        lambda rng: (rng.random(3000) < 0.05).astype(int),  # two symbols, skewed
        lambda rng: rng.integers(0, 65536, size=3000),  # full alphabet
    ],
)
def test_round_trip_distributions(make):
    rng = np.random.default_rng(1)
    symbols = make(rng)
    alphabet = max(int(symbols.max()) + 1, 1)
    data = encode_stream(symbols, alphabet)
    assert data is not None
    out = decode_stream(data, symbols.size, alphabet)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, symbols)


def test_empty_stream():
    assert encode_stream(np.zeros(0, dtype=int), 4) == b""
    assert decode_stream(b"", 0, 4).size == 0
    with pytest.raises(FormatError):
        decode_stream(b"\x00", 0, 4)
    with pytest.raises(FormatError):
        decode_stream(b"", 1, 4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=300), st.integers(8, 16))
def test_rans_equals_reference_for_any_precision(symbols, precision):
    counts = np.bincount(symbols, minlength=21)
    freqs = normalize_counts(counts, precision)
    data = rans_encode(np.array(symbols), freqs, precision)
    assert data == reference_rans_encode(symbols, freqs.tolist(), precision)
    np.testing.assert_array_equal(rans_decode(data, freqs, precision, len(symbols)), symbols)


def test_size_close_to_ideal_entropy():
    rng = np.random.default_rng(2)
    probs = np.array([0.4, 0.2, 0.15, 0.1, 0.06, 0.04, 0.03, 0.02])
    symbols = rng.choice(probs.size, size=100_000, p=probs)
    data = encode_stream(symbols, probs.size)
    _, _, table_len = read_table(data, probs.size)
    ideal = ideal_bits(np.bincount(symbols)) / 8
    assert len(data) - table_len <= 1.01 * ideal
    assert len(data) - table_len >= ideal - 8  # an entropy coder cannot beat the entropy by much


def test_anti_bomb_cap():
    assert encode_stream(np.zeros(100_000, dtype=int), 2) is None  # 4 bytes of rANS data: refused
    data = encode_stream(np.zeros(4 * MAX_SYMBOLS_PER_BYTE, dtype=int), 2)
    assert data is not None
    decode_stream(data, 4 * MAX_SYMBOLS_PER_BYTE, 2)
    with pytest.raises(FormatError, match="refusing"):
        decode_stream(data, 4 * MAX_SYMBOLS_PER_BYTE + 1, 2)


def test_budget_skips_hopeless_streams():
    symbols = np.random.default_rng(3).integers(0, 16, size=1000)
    assert encode_stream(symbols, 16, budget=400) is None  # 1000 uniform 4-bit symbols need ~500 bytes
    assert encode_stream(symbols, 16, budget=10_000) is not None


def test_corruption_is_detected():
    rng = np.random.default_rng(4)
    symbols = rng.geometric(0.4, size=2000) - 1
    alphabet = int(symbols.max()) + 1
    data = encode_stream(symbols, alphabet)
    caught = 0
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        try:
            out = decode_stream(bytes(bad), symbols.size, alphabet)
        except FormatError:
            caught += 1
        else:
            assert not np.array_equal(out, symbols)  # never silently "correct"
    assert caught >= 0.99 * len(data)
    for cut in (1, 2, 3, len(data) // 2, len(data) - 2):
        with pytest.raises(FormatError):
            decode_stream(data[:cut], symbols.size, alphabet)
    with pytest.raises(FormatError):
        decode_stream(data, symbols.size + 1, alphabet)  # asks for more symbols than were coded


@pytest.mark.parametrize(
    "table, message",
    [
        (b"\x07\x01\x80\x01", "precision"),
        (b"\x08\x00", "alphabet size"),
        (b"\x08\x05\x80\x02", "alphabet size"),  # A = 5 > max 4
        (b"\x08\x02\x80\x01\x7f", "sum"),
        (b"\x08\x02\x80\x02\x01", "more than"),
        (b"\x08\x02\x00\x05", "bad frequency table"),  # zero run past A
    ],
)
def test_bad_tables(table, message):
    with pytest.raises(FormatError, match=message):
        decode_stream(table + b"\x00\x00\x01\x00", 1, 4)
    with pytest.raises(FormatError):
        decode_stream(table[:-1], 1, 4)  # cut inside the table
