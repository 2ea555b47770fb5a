"""The container and header checks of header.py and schema.py: strict JSON, caps, and reading without trusting."""

from __future__ import annotations

import json
import time
import tracemalloc

import fuzzcases as fz
import fuzzgen as fg
import numpy as np
import pytest
import torch

from fisherpack.errors import FisherpackError, FormatError
from fisherpack.fpk import container as fpk
from fisherpack.fpk import entropy
from fisherpack.fpk.header import MAX_SEPARATORS, default_max_elements
from fisherpack.fpk.tensors import Compressed, RawTensor


def small() -> bytes:
    """A small file in version 3, whose header lists every key (as the hand-made headers here do)."""
    return fpk.encode(Compressed({"b": RawTensor(torch.arange(4.0))}, {"model": "x"}), version=3)


def with_header_text(text: bytes) -> bytes:
    return fz.frame_json(text, fz.parts(small())[1])


HEADER = json.dumps(fz.header_of(small())).encode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER.replace(b'"x"', b"NaN"), "does not allow NaN"),
        (HEADER.replace(b'"x"', b"-Infinity"), "does not allow -Infinity"),
        (HEADER.replace(b'"x"', b"1e999"), "out of the float64 range"),
        (HEADER.replace(b'{"model"', b'{"model": 1, "model"'), "'model' appears twice"),
        (HEADER.replace(b'"kind": "raw"', b'"kind": "raw", "kind": "raw"'), "'kind' appears twice"),
        (HEADER.replace(b'"x"', b"1" * 5000), "not valid UTF-8 JSON"),  # over Python's int digit limit
        (b"[" * (MAX_SEPARATORS + 1), f"more than the limit of {MAX_SEPARATORS}"),
    ],
)
def test_strict_json(text, message):
    with pytest.raises(FormatError, match=message):
        fpk.decode(with_header_text(text))


def test_separators_up_to_the_cap_parse():
    base = HEADER.replace(b'{"model": "x"}', b'{"a":[0]}')
    n = MAX_SEPARATORS - sum(base.count(c) for c in b"[{,:")  # commas to add to reach the cap exactly
    text = base.replace(b"[0]", b"[" + b"0," * n + b"0]")
    assert sum(text.count(c) for c in b"[{,:") == MAX_SEPARATORS
    assert len(fpk.decode(with_header_text(text)).meta["a"]) == n + 1
    with pytest.raises(FormatError, match=f"{MAX_SEPARATORS + 1} JSON separators"):
        fpk.decode(with_header_text(text.replace(b"[0,", b"[0,0,")))


def test_default_element_limit_follows_the_file_size():
    assert default_max_elements(100) == 2**20 and default_max_elements(10**4) == 4096 * 10**4
    assert default_max_elements(10**6) == 2**28
    bombs = fg.bombs()
    with pytest.raises(FormatError, match=r"default limit for a \d+-byte file.*pass a larger max_elements"):
        fpk.decode(bombs["quant: one entry over the default"])
    w = fpk.decode(bombs["quant: one entry over the default"], max_elements=2**21).state_dict()["w"]
    assert w.shape == (2**20 + 1,) and not w.any()
    with pytest.raises(FormatError, match="max_elements=3 entries"):
        fpk.decode(small(), max_elements=3)


def test_read_checks_the_size_before_reading(tmp_path):
    data = small()
    path = tmp_path / "big.fpk"
    with open(path, "wb") as fh:  # a sparse 1 GiB file with a valid preamble at its start
        fh.write(data)
        fh.truncate(1 << 30)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(FormatError, match=f"longer than its header says: expected {len(data)} bytes"):
        fpk.read_bytes(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20 and time.perf_counter() - start < 1
    path.write_bytes(data[:-1])
    with pytest.raises(FormatError, match="truncated"):
        fpk.load(path)
    with pytest.raises(FisherpackError, match="cannot read"):
        fpk.load(tmp_path)


def test_rans_words_that_no_symbol_can_read_are_refused_early():
    stream = entropy.encode_stream(np.zeros(10, dtype=np.uint8) + np.arange(10) % 2, 2, version=1)
    with pytest.raises(FormatError, match="more words than its symbols can read"):
        entropy.decode_stream(stream + bytes(40), 10, 2, version=1)


def test_large_zlib_tensor_round_trips_writable():
    t = torch.zeros(3 << 20)  # 12 MiB of zeros: inflated in 1 MiB steps
    t[12345] = 1.5
    out = fpk.decode(fpk.encode(Compressed({"t": RawTensor(t)}))).tensors["t"].tensor
    assert fpk.describe(fpk.encode(Compressed({"t": RawTensor(t)})))["tensors"][0]["streams"][0]["encoding"] == "zlib"
    assert torch.equal(out, t)
    out.add_(1)  # writable, and not shared with anything else
