"""The fuzz suite: damaged and hostile files get FormatError, or decode to the declared shapes.

Every case goes through ``fuzzcases.check`` (one-line FormatError, or decode + describe + re-encode
with the declared shapes; anything else, or more than 2 s, fails). The sample files are a real
LeNet-5 pruned to 2% and quantized by ``fisherpack.compress`` (random weights: the bytes matter, not
the accuracy) and a small file that uses every encoding, each written with and without the entropy
stage in the current format version, and the small file in version 3 (whose header lists the keys
version 4 leaves out). Case counts per family are printed at the end of the pytest run (see conftest.py).

``FISHERPACK_FUZZ_LONG=1`` runs 50 times as many random cases; ``FISHERPACK_FUZZ_SEED=N`` changes
them. ``benchmarks/fuzz.py`` runs for a given time, and under atheris if it is installed.
"""

from __future__ import annotations

import json
import os

import fuzzcases as fz
import fuzzcost as fc
import fuzzgen as fg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fisherpack.fpk import container as fpk
from fisherpack.fpk.header import DTYPES, HEADER_CAP

SCALE = 50 if os.environ.get("FISHERPACK_FUZZ_LONG") else 1
SEED = int(os.environ.get("FISHERPACK_FUZZ_SEED", "0"))
FILES = {
    "lenet5": lambda: fz.lenet5_file(True),
    "lenet5 plain": lambda: fz.lenet5_file(False),
    "mixed": lambda: fz.mixed_file(True),
    "mixed plain": lambda: fz.mixed_file(False),
    "mixed v3": lambda: fz.mixed_file(True, version=3),  # every key in the header (version 4 leaves some out)
}
# Random cases per file and family. LeNet-5 cases that get past the checks decode ~400k entries
# (a few ms each), so the bulk of the random cases use the small files.
RANDOM = {"lenet5": 150, "lenet5 plain": 150, "mixed": 1200, "mixed plain": 1200, "mixed v3": 600}


def rng(name: str, family: str) -> np.random.Generator:
    return np.random.default_rng([SEED, *f"{name}/{family}".encode()])


def test_sample_files_are_real_and_use_every_encoding():
    lenet = fpk.decode(fz.lenet5_file())
    assert sum(t.numel() for t in lenet.state_dict().values()) == 431_080
    used = {
        (t["kind"], s["encoding"]) for f in FILES.values() for t in fpk.describe(f())["tensors"] for s in t["streams"]
    }
    mask, symbols = ("all", "bitmap", "gaps", "gaps_ans"), ("packed", "ans")
    assert used == {("raw", "plain"), ("raw", "zlib")} | {("quant", e) for e in mask + symbols}
    dtypes = {t.get("dtype") for t in fpk.describe(fz.mixed_file())["tensors"]}
    assert {"float32", "bool", "bfloat16", "int64", "int8"} <= dtypes


@pytest.mark.parametrize("name", FILES)
def test_truncation_at_every_byte(name):
    data = FILES[name]()
    seen = fz.run(f"{name}: cut at every byte", fg.truncations(data), expect="error")
    assert seen["error"] == len(data)


@pytest.mark.parametrize("name", FILES)
def test_payload_cut_behind_a_valid_crc(name):
    """At every byte for the LeNet-5 file fisherpack writes by default; at every 10th for the plain one."""
    data, step = FILES[name](), 10 if name == "lenet5 plain" else 1
    seen = fz.run(f"{name}: payload cut, re-signed", fg.cut_payloads(data, step), expect="error")
    assert seen["error"] == len(range(0, len(fz.parts(data)[1]), step)) + 1


@pytest.mark.parametrize("name", FILES)
def test_header_cut_at_every_byte_behind_a_valid_crc(name):
    data = FILES[name]()
    seen = fz.run(f"{name}: header cut, re-signed", fg.cut_headers(data), expect="error")
    assert seen["error"] == len(fz.parts(data)[0])


@pytest.mark.parametrize("name", FILES)
def test_random_bit_flips_are_caught(name):
    fz.run(f"{name}: bit flips", fg.bit_flips(FILES[name](), rng(name, "flips"), 400 * SCALE), expect="error")


@pytest.mark.parametrize("name", FILES)
def test_payload_edits_behind_a_valid_crc(name):
    fz.run(f"{name}: payload edits", fg.payload_edits(FILES[name](), rng(name, "payload"), RANDOM[name] * SCALE))


@pytest.mark.parametrize("name", FILES)
def test_streams_replaced_by_garbage(name):
    fz.run(f"{name}: stream swaps", fg.stream_swaps(FILES[name](), rng(name, "swaps"), RANDOM[name] * SCALE))


@pytest.mark.parametrize("name", FILES)
def test_header_edits_behind_a_valid_crc(name):
    n = 2 * RANDOM[name] * SCALE
    fz.run(f"{name}: header edits", fg.header_edits(FILES[name](), rng(name, "header"), n))


@pytest.mark.parametrize("name", ["mixed", "lenet5"])
def test_header_text_edits_behind_a_valid_crc(name):
    cases = fg.header_text_edits(FILES[name](), rng(name, "text"), 400 * SCALE)
    fz.run(f"{name}: header text edits", cases)


# ---------------------------------------------------------------- headers generated from scratch


def _maybe(good):
    """Mostly a plausible value, sometimes any hostile one."""
    hostile = st.one_of(
        st.integers(-3, 70),
        st.sampled_from([2**16, 2**28, 2**31, 2**32, 2**63, 2**64, -(2**63), 10**30]),
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=4),
        st.just([]),
        st.just({}),
    )
    return st.one_of(good, good, good, good, hostile)


ENCODINGS = ["all", "bitmap", "gaps", "gaps_ans", "packed", "ans", "plain", "zlib", "lz4"]
STREAM = st.fixed_dictionaries(
    {"encoding": _maybe(st.sampled_from(ENCODINGS)), "length": _maybe(st.integers(0, 24))},
    optional={"width": _maybe(st.integers(0, 33)), "buckets_length": _maybe(st.integers(0, 24))},
)
GROUP = st.fixed_dictionaries(
    {
        "bits": _maybe(st.integers(1, 16)),
        "exp": _maybe(st.integers(-64, 64)),
        "grid": _maybe(st.sampled_from(["int", "odd"])),
        "count": _maybe(st.integers(0, 12)),
    }
)
NAME = _maybe(st.sampled_from(["w", "b", "c", ""]))
SHAPE = _maybe(st.lists(_maybe(st.integers(0, 6)), max_size=3))
QUANT = st.fixed_dictionaries(
    {
        "kind": st.just("quant"),
        "name": NAME,
        "shape": SHAPE,
        "kept": _maybe(st.integers(0, 12)),
        "groups": _maybe(st.lists(GROUP, min_size=1, max_size=3)),
        "mask": _maybe(STREAM),
        "codes": _maybe(st.lists(STREAM, min_size=1, max_size=3)),
    },
    optional={"ids": STREAM},
)
RAW = st.fixed_dictionaries(
    {
        "kind": st.just("raw"),
        "name": NAME,
        "dtype": _maybe(st.sampled_from(list(DTYPES))),
        "shape": SHAPE,
        "data": _maybe(STREAM),
    }  # fmt: skip
)
ALIAS = st.fixed_dictionaries({"kind": _maybe(st.just("alias")), "name": NAME, "target": NAME})
HEADER = st.fixed_dictionaries(
    {
        "meta": _maybe(st.dictionaries(st.text(max_size=3), st.integers())),
        "tensors": st.lists(st.one_of(QUANT, RAW, ALIAS), max_size=4),
    }  # fmt: skip
)


def _declared_length(header: dict) -> int | None:
    """Sum of the stream lengths if they are plausible, so the payload can match them."""
    try:
        return sum(s["length"] for s in fg._streams(header) if type(s["length"]) is int and 0 <= s["length"] < 64)
    except (KeyError, TypeError):
        return None


@settings(
    max_examples=800 * SCALE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(header=HEADER, data=st.data())
def test_generated_headers(header, data):
    n = _declared_length(header)
    payload = data.draw(st.binary(min_size=n or 0, max_size=n if n is not None else 32))
    fz.run("generated headers (hypothesis)", [fz.frame_json(json.dumps(header).encode(), payload)])


# ---------------------------------------------------------------- bombs and memory


# Each bomb: the expected outcome, and a bound on what decoding it may allocate (tracemalloc peak, in
# MiB), or None where the bomb is about time (many small objects: tracemalloc would slow it tenfold).
BOMBS = {
    "header: empty lists up to the separator cap": ("decoded", 96),
    "header: 64 MiB of empty lists": ("error", (HEADER_CAP >> 20) + 16),
    "header: 64 MiB string": ("decoded", (2 * HEADER_CAP >> 20) + 16),
    "header: 65 MiB (over the cap)": ("error", (HEADER_CAP >> 20) + 16),
    "quant: 0 of max entries kept": ("decoded", 8),
    "quant: one entry over the default": ("error", 1),
    "rans: 64 symbols per byte, 1 symbol": ("error", None),
    "raw: zlib of 256 MiB": ("decoded", 320),
    "header: empty raw tensors up to the cap": ("decoded", None),
    "header: aliases up to the cap": ("decoded", None),
    "quant: 0 of 2**28 kept, 64 KiB file": ("decoded", 1300),
}


def test_bombs_are_refused_or_cost_what_their_size_allows(record_property):
    """Each bomb (all are files under 1 MB) decodes or is refused within a second of CPU time and
    512 MiB of resident memory, and within its tracemalloc budget (what it asks for, touched or not).
    benchmarks/fuzz.py --memory measures the resident memory of each in a fresh process."""
    bombs = fg.bombs()
    assert set(bombs) == set(BOMBS)
    for name, data in bombs.items():
        expected, budget = BOMBS[name]
        before = fz.peak_reset()
        outcome, _, seconds = fz.measure(data, limit=30, traced=False)
        grown = fz.peak_growth(before)
        if seconds > fz.LIMIT:  # a loaded machine only adds time: the better of two runs is the cost
            seconds = min(seconds, fz.measure(data, limit=30, traced=False, count=False)[2])
        fz.within_limits(name, len(data), seconds, grown)
        if budget is not None:  # tracemalloc slows the decoder: a second, traced run for memory only
            _, peak, _ = fz.measure(data, limit=30, count=False)
            assert peak < budget, f"{name}: {peak:.0f} MiB allocated, budget {budget} MiB"
        record_property(name, f"{len(data)} bytes, {seconds:.2f} s CPU")
        assert outcome == expected, name


# ---------------------------------------------------------------- cost attacks (issue 16)

COST = fc.files()


def _cost(family: str, fn, record_property) -> str:
    outcome, seconds, mib = fc.measure(fn)
    for _ in range(2):  # a loaded machine only adds time: the best of up to three runs is the cost
        if seconds <= fc.LIMIT_SECONDS:
            break
        seconds = min(seconds, fc.measure(fn)[1])
    fz.note(family, outcome, seconds)
    record_property(family, f"{outcome}, {seconds:.3f} s CPU, {mib} MiB")
    fz.within_limits(family, None, seconds, mib)  # every cost-attack file is at most 1 MB
    return outcome


@pytest.mark.parametrize("name", sorted(COST))
def test_cost_attacks_take_at_most_a_second_and_512_mib(name, record_property):
    data = COST[name]
    _cost(f"cost: {name}", lambda: fc.every_reader(data), record_property)


@pytest.mark.parametrize("reader", ["inspect", "load", "export"])
def test_many_tiny_rans_streams_take_at_most_a_second_in_each_reader(reader, record_property):
    count, data = fc.tiny_rans_streams()
    assert len(data) <= fc.MAX_FILE
    assert len(fpk.describe(data)["tensors"]) == count > 7000  # within the separator cap: the streams are reached
    _cost(f"cost: {count} tiny rANS streams, {reader}", fc.readers(data)[reader], record_property)


@pytest.mark.parametrize(("tail", "expected"), [(0, "decoded"), (300 << 20, "error"), (None, "error")])
def test_a_pipe_is_read_no_further_than_its_header_says(tail, expected, record_property):
    label = "endless zeros" if tail is None else f"{tail >> 20} MiB" if tail else "nothing"
    family = f"cost: pipe, the LeNet-5 file then {label}"
    assert _cost(family, fc.read_through_pipe(fz.lenet5_file(), tail), record_property) == expected


def test_a_pipe_that_claims_2_64_bytes_is_refused_before_reading(record_property):
    data = bytearray(fz.lenet5_file()[: fz.PRE.size])
    data[14:22] = (2**64 - 1).to_bytes(8, "little")  # the payload length
    family = "cost: pipe, a preamble claiming 2**64 bytes, then 1 GiB"  # not endless: a regression stays bounded
    assert _cost(family, fc.read_through_pipe(bytes(data), 1 << 30), record_property) == "error"


# the tests of this file, parametrizations included
EXPECTED_TESTS = 1 + 7 * len(FILES) + 2 + 1 + 1 + 1 + len(COST) + 3 + 3 + 1


def test_at_least_10000_cases_ran(request):
    """The CI slice is large enough. Skipped when only part of this file was selected (-k, a node id)."""
    mine = [i for i in request.session.items if i.path == request.node.path]
    total = sum(fz.COUNTS.values())
    if len(mine) < EXPECTED_TESTS:
        pytest.skip(f"only {len(mine)} of {EXPECTED_TESTS} fuzz tests selected ({total} cases ran)")
    assert total >= 10_000, f"only {total} fuzz cases ran"
