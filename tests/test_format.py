"""The .fpk file: bit-exact round trips, encoding choices, golden bytes, and hostile input."""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from pathlib import Path

import fuzzcases as fz
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fisherpack.errors import FisherpackError, FormatError
from fisherpack.fpk import container as fpk
from fisherpack.fpk import entropy
from fisherpack.fpk.entropy import ideal_bits
from fisherpack.fpk.header import inflate_header
from fisherpack.fpk.tensors import Alias, Compressed, QuantTensor, RawTensor

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
PRE = struct.Struct("<8sHIQ")


# ---------------------------------------------------------------- helpers


def quant(mask, groups=None, codes=None, bits=(4,), exps=(-3,), grids=("int",), shape=None, seed=0):
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    kept = int(mask.sum())
    rng = np.random.default_rng(seed)
    groups = np.zeros(kept, np.uint8) if groups is None else np.asarray(groups, np.uint8)
    if codes is None:
        codes = rng.integers(0, 1 << np.asarray(bits)[groups]) if kept else np.zeros(0)
    shape = (mask.size,) if shape is None else shape
    return QuantTensor(shape, mask, groups, np.asarray(codes, np.uint16), bits, exps, grids)


def exact(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers, so NaN payloads and -0.0 compare exactly."""
    if t.dtype.is_floating_point:
        return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
    return t


def assert_identical(a: Compressed, b: Compressed) -> None:
    assert list(a.tensors) == list(b.tensors)
    assert a.meta == b.meta
    for name, x in a.tensors.items():
        y = b.tensors[name]
        assert type(x) is type(y), name
        if isinstance(x, QuantTensor):
            assert (x.shape, x.bits, x.exps, x.grids) == (y.shape, y.bits, y.exps, y.grids)
            for field in ("mask", "groups", "codes"):
                xa, ya = getattr(x, field), getattr(y, field)
                assert xa.dtype == ya.dtype and np.array_equal(xa, ya), (name, field)
        elif isinstance(x, Alias):
            assert x == y
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and sa[name].shape == sb[name].shape, name
        assert torch.equal(exact(sa[name]), exact(sb[name])), name


def round_trip(c: Compressed, entropy: bool = True) -> bytes:
    data = fpk.encode(c, entropy=entropy)
    assert_identical(c, fpk.decode(data))
    return data


def split(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, payload) of a real file, to build hostile variants from."""
    return fz.header_of(data), fz.parts(data)[1]


def frame(header, payload: bytes, version: int = fz.FULL) -> bytes:
    """A well-framed file (valid CRC) around any header, so validation past the CRC is exercised.
    Version 3 by default: the hostile headers below list every key; version 4's own cases are marked."""
    return fz.frame_json(header, payload, version)


def tiny_example() -> Compressed:
    """The worked example of docs/FORMAT.md."""
    mask = np.array([1, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    weight = QuantTensor(
        (2, 4),
        mask,
        np.array([0, 1, 0, 1], np.uint8),
        np.array([1, 2, 7, 0], np.uint16),
        (3, 2),
        (-2, 0),
        ("int", "odd"),
    )
    bias = RawTensor(torch.tensor([0.5, -1.0]))
    return Compressed({"fc.weight": weight, "fc.bias": bias, "head.weight": Alias("fc.weight")}, {"model": "tiny"})


def small_model(entropy_friendly: bool = True) -> Compressed:
    rng = np.random.default_rng(5)
    mask = rng.random(3000) < 0.1
    kept = int(mask.sum())
    groups = (rng.random(kept) < 0.1).astype(np.uint8)
    codes = np.where(groups == 0, np.clip(np.round(rng.laplace(8, 1.2, kept)), 0, 15), rng.integers(0, 64, kept))
    q = quant(mask, groups, codes, bits=(4, 6), exps=(-5, -8), grids=("int", "odd"), shape=(30, 100))
    return Compressed(
        {
            "w": q,
            "b": RawTensor(torch.randn(30, generator=torch.Generator().manual_seed(0))),
            "tied": Alias("w"),
            "n": RawTensor(torch.tensor(7)),
        },
        {"config": {"sparsity": 0.9, "name": "small"}, "list": [1, 2.5, None, True, "x"]},
    )


# ---------------------------------------------------------------- round trips


def special_values(dtype: torch.dtype, shape) -> torch.Tensor:
    n = math.prod(shape)
    if dtype == torch.bool:
        return (torch.arange(n) % 3 == 0).reshape(shape)
    if dtype.is_floating_point:
        t = torch.randn(n, dtype=torch.float64).to(dtype)
        special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-30], dtype=dtype)
        t[: min(n, 5)] = special[: min(n, 5)]
        return t.reshape(shape)
    info = torch.iinfo(dtype)
    t = torch.randint(info.min, info.max, (n,), dtype=torch.int64).to(dtype)
    t[: min(n, 2)] = torch.tensor([info.min, info.max], dtype=dtype)[: min(n, 2)]
    return t.reshape(shape)


@pytest.mark.parametrize("dtype", [dt for dt, _ in fpk.DTYPES.values()])
@pytest.mark.parametrize("shape", [(3, 5), (), (0, 4), (2, 0, 3), (1, 1, 1, 1, 1, 1, 1, 2)])
@pytest.mark.parametrize("entropy", [True, False])
def test_raw_round_trip_every_dtype(dtype, shape, entropy):
    c = Compressed({"t": RawTensor(special_values(dtype, shape)), "z": RawTensor(torch.zeros(100, dtype=dtype))})
    round_trip(c, entropy)
    out = fpk.decode(fpk.encode(c, entropy)).tensors["t"].tensor
    out.add_(1) if dtype != torch.bool else out.logical_not_()  # a fresh, writable tensor


def test_raw_zlib_only_when_smaller():
    zeros, noise = torch.zeros(1000), torch.randint(-(2**31), 2**31 - 1, (1000,), dtype=torch.int32)
    info = fpk.describe(fpk.encode(Compressed({"z": RawTensor(zeros), "n": RawTensor(noise)})))
    assert [t["streams"][0]["encoding"] for t in info["tensors"]] == ["zlib", "plain"]
    off = fpk.describe(fpk.encode(Compressed({"z": RawTensor(zeros)}), entropy=False))
    assert off["tensors"][0]["streams"][0]["encoding"] == "plain"


def test_raw_non_contiguous_and_grad():
    t = torch.randn(4, 6, requires_grad=True)
    c = Compressed({"t": RawTensor(t.t()[::2])})
    out = fpk.decode(fpk.encode(c)).tensors["t"].tensor
    assert torch.equal(out, t.detach().t()[::2])


def mask_encoding(c: Compressed, entropy: bool) -> str:
    return fpk.describe(round_trip(c, entropy))["tensors"][0]["streams"][0]["encoding"]


def test_mask_encodings_are_chosen_by_size():
    rng = np.random.default_rng(6)
    dense, medium, sparse = np.ones(5000), rng.random(5000) < 0.5, rng.random(50_000) < 0.01
    assert mask_encoding(Compressed({"w": quant(dense)}), True) == "all"
    assert mask_encoding(Compressed({"w": quant(medium)}), True) == "bitmap"
    assert mask_encoding(Compressed({"w": quant(sparse)}), False) == "gaps"
    assert mask_encoding(Compressed({"w": quant(sparse)}), True) == "gaps_ans"
    prefix = np.arange(1000) < 300  # all gaps zero: width 0, no bytes at all
    assert fpk.describe(round_trip(Compressed({"w": quant(prefix)})))["tensors"][0]["streams"][0]["length"] == 0


@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize(
    "mask",
    [np.zeros(0), np.zeros(100), np.zeros(1), np.ones(1), np.eye(1, 100, 99)[0], np.eye(1, 100, 0)[0], np.ones(17)],
)
def test_quant_edge_masks(mask, entropy):
    round_trip(Compressed({"w": quant(mask)}), entropy)


@pytest.mark.parametrize("entropy", [True, False])
def test_quant_one_and_many_groups(entropy):
    rng = np.random.default_rng(7)
    mask = rng.random(20_000) < 0.3
    kept = int(mask.sum())
    bits = (1, 2, 3, 5, 8, 12, 13, 16, 4, 4, 4, 4, 4, 4, 4, 6)
    grids = tuple(("int", "odd")[i % 2] for i in range(16))
    exps = tuple(range(-64, 64, 8))
    groups = rng.integers(0, 16, size=kept)
    groups[:16] = np.arange(16)
    many = quant(mask, groups, bits=bits, exps=exps, grids=grids, shape=(200, 100))
    one = quant(mask, bits=(16,), exps=(64,), grids=("odd",), shape=(20, 10, 100))
    unused_group = quant(mask, np.zeros(kept), bits=(3, 5), exps=(0, 0), grids=("int", "int"))
    round_trip(Compressed({"many": many, "one": one, "unused": unused_group, "alias": Alias("many")}), entropy)


def test_entropy_coding_is_used_where_it_pays():
    c = small_model()
    info = fpk.describe(round_trip(c))
    streams = {s["role"]: s["encoding"] for s in info["tensors"][0]["streams"]}
    assert streams == {"mask": "gaps_ans", "ids": "ans", "codes[0]": "ans", "codes[1]": "packed"}
    assert len(fpk.encode(c)) < len(fpk.encode(c, entropy=False))


def test_aliases_share_their_target():
    c = small_model()
    sd = fpk.decode(fpk.encode(c)).state_dict()
    assert sd["tied"] is sd["w"]


def test_determinism_and_canonical_re_encoding():
    c = small_model()
    data = fpk.encode(c)
    assert data == fpk.encode(small_model())
    assert fpk.encode(fpk.decode(data)) == data


def test_save_and_load(tmp_path):
    c = small_model()
    path = tmp_path / "model.fpk"
    n = fpk.save(c, path)
    assert n == path.stat().st_size
    assert_identical(c, fpk.load(path))
    assert fpk.read_bytes(path) == path.read_bytes() == fpk.encode(c)
    assert fpk.describe(fpk.read_bytes(path))["file_bytes"] == n
    with pytest.raises(FisherpackError, match="cannot read") as err:
        fpk.load(tmp_path / "missing.fpk")
    assert not isinstance(err.value, FormatError)
    with pytest.raises(FisherpackError, match="cannot read"):
        fpk.load(tmp_path)


def test_encode_refuses_what_it_cannot_store():
    with pytest.raises(ValueError, match="alias"):
        fpk.encode(Compressed({"a": Alias("b"), "b": RawTensor(torch.ones(1))}))
    with pytest.raises(ValueError, match="alias"):
        fpk.encode(Compressed({"b": RawTensor(torch.ones(1)), "a": Alias("b"), "c": Alias("a")}))
    with pytest.raises(ValueError, match="dtype"):
        fpk.encode(Compressed({"c": RawTensor(torch.ones(2, dtype=torch.complex64))}))
    with pytest.raises(ValueError, match="names"):
        fpk.encode(Compressed({"": RawTensor(torch.ones(1))}))
    with pytest.raises(ValueError, match="meta"):
        fpk.encode(Compressed({}, {"x": float("nan")}))


@pytest.mark.parametrize("pruned", [True, False])
def test_dequantize_into_overwrites_every_entry_of_a_used_buffer(pruned):
    weight = tiny_example().tensors["fc.weight"]
    if not pruned:  # every entry kept: no zeroing pass, the values cover the buffer
        weight = QuantTensor((2, 4), np.ones(8, bool), np.zeros(8, np.uint8), np.arange(8, dtype=np.uint16),
                             (3,), (-2,), ("int",))  # fmt: skip
    out = np.full(8, np.nan, dtype=np.float32)  # what a model's old weights leave behind
    weight.dequantize_into(out)
    assert np.array_equal(out, weight.dequantize().numpy().reshape(-1))
    assert (out == 0).sum() == (8 - weight.kept) + int((weight.values() == 0).sum())


def test_describe_reports_layout():
    data = fpk.encode(tiny_example())
    info = fpk.describe(data)
    assert (info["version"], info["file_bytes"], info["payload_bytes"]) == (4, len(data), 12)
    w, b, a = info["tensors"]
    assert (w["kind"], w["shape"], w["kept"], w["numel"], w["bytes"]) == ("quant", [2, 4], 4, 8, 4)
    assert w["groups"][1] == {"bits": 2, "exp": 0, "grid": "odd", "count": 2}
    assert [s["role"] for s in w["streams"]] == ["mask", "ids", "codes[0]", "codes[1]"]
    assert b["streams"] == [{"role": "data", "encoding": "plain", "length": 8}] and b["dtype"] == "float32"
    assert a == {
        "name": "head.weight",
        "kind": "alias",
        "target": "fc.weight",
        "shape": [2, 4],
        "streams": [],
        "bytes": 0,
    }


def test_describe_decodes_every_stream_only_when_asked_and_checks_the_header_once(monkeypatch):
    from fisherpack.fpk import reader, schema

    data = bytearray(fpk.encode(tiny_example()))
    _, _, hlen, plen = fpk.PRE.unpack_from(data)
    data[fpk.PRE.size + hlen] ^= 0x80  # a bit of the first mask: the header still fits, the stream does not
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    data = bytes(data)
    assert fpk.describe(data)["payload_bytes"] == plen  # the layout alone does not decode it
    with pytest.raises(FormatError) as refused:
        fpk.decode(data)
    calls = []
    monkeypatch.setattr(reader, "validate", lambda *a: calls.append(1) or schema.validate(*a))
    with pytest.raises(FormatError) as described:
        fpk.describe(data, decode_streams=True)
    assert str(described.value) == str(refused.value) and calls == [1]
    assert fpk.describe(fpk.encode(tiny_example()), decode_streams=True) == fpk.describe(fpk.encode(tiny_example()))


# ---------------------------------------------------------------- golden bytes and the spec


def doc_block(marker: str) -> str:
    """The fenced block following ``<!-- marker -->`` in docs/FORMAT.md."""
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/FORMAT.md has no block marked {marker}"
    return match.group(1)


def hex_of(block: str) -> bytes:
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in block.strip().splitlines()))


def test_golden_bytes_of_a_tiny_file():
    data = fpk.encode(tiny_example())
    payload = "96 50 3c 80" + "0000003f 000080bf"  # mask, ids, codes[0], codes[1], bias (float32 LE)
    assert data[:22].hex() == "8946504b0d0a1a0a" + "0400" + "57000000" + "0c00000000000000"
    assert data[-16:-4] == bytes.fromhex(payload)
    assert data[-4:] == struct.pack("<I", zlib.crc32(data[:-4]))
    x = Compressed({"x": RawTensor(torch.tensor([1, 2, 3], dtype=torch.uint8))})
    assert fpk.encode(x).hex() == (  # a whole file, header included: any drift in the encoder shows up here
        "8946504b0d0a1a0a04001d0000000300000000000000ab86559768f916678644ca19a540d759e0c8171548a1631c5b1b5b0b00010203"
        "29d00d1f"
    )
    assert fpk.encode(x, version=3).hex() == (  # version 3: the same, with the data's length in the header
        "8946504b0d0a1a0a03001e0000000300000000000000ab86559768f996880c698c94494a810eb5c091452a9002ca38b636b616000102"
        "030fb5970e"
    )
    assert fpk.encode(x, version=2).hex() == (  # the same file in version 2: a zlib header, no dictionary
        "8946504b0d0a1a0a020065000000030000000000000078da1d8b310e80300c03ffe2998d05f52b15434423a82801d1204055ff4ecae6f3"
        "d9051b2bc195da4159f27e66385f10e86fc132ed21ca0c8723511474482cb32e70bd5d82be079bbba2e8606e8d120c4fba0d84b6e61e8b"
        "79a1b6f3fd58c7fa01d28425a101020370dfd752"
    )


def test_format_md_example_matches_the_code():
    data = fpk.encode(tiny_example())
    assert hex_of(doc_block("example-file")) == data
    header, payload = split(data)
    assert doc_block("example-header").strip() == json.dumps(header, sort_keys=True, separators=(",", ":"))
    assert fpk.encode(tiny_example(), entropy=False) == data  # the example needs no entropy coding


def test_format_md_rans_example_matches_the_code():
    from fisherpack.fpk.entropy import encode_stream

    symbols = np.array([0, 1, 1, 0, 2, 0, 0, 1, 0, 2, 1, 0, 0, 1, 0, 0])
    assert hex_of(doc_block("example-rans")) == encode_stream(symbols, 3)
    assert hex_of(doc_block("example-rans-v1")) == encode_stream(symbols, 3, version=1)


# ---------------------------------------------------------------- malformed input


def test_truncation_at_every_offset():
    data = fpk.encode(tiny_example())
    for cut in range(len(data)):
        with pytest.raises(FormatError, match="truncated"):
            fpk.decode(data[:cut])
    with pytest.raises(FormatError, match="longer than"):
        fpk.decode(data + b"\x00")


def test_random_bit_flips():
    data = fpk.encode(small_model())
    rng = np.random.default_rng(8)
    for _ in range(300):
        bad = bytearray(data)
        pos = int(rng.integers(len(data)))
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(FormatError):
            fpk.decode(bytes(bad))


def test_other_formats_are_not_fisherpack_files(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40)
    for data in (buf.getvalue(), png, b"hello, this is a text file\n" * 3, bytes(100)):
        with pytest.raises(FormatError, match="not a fisherpack file"):
            fpk.decode(data)
        (tmp_path / "x.fpk").write_bytes(data)
        with pytest.raises(FormatError, match="not a fisherpack file"):
            fpk.load(tmp_path / "x.fpk")
    with pytest.raises(FormatError, match="zip archive"):
        fpk.decode(buf.getvalue())


def test_bad_version_and_checksum():
    data = bytearray(fpk.encode(tiny_example()))
    data[8] = 5
    with pytest.raises(FormatError, match="unsupported format version 5 .* upgrade"):
        fpk.decode(bytes(data))
    data = bytearray(fpk.encode(tiny_example()))
    data[-6] ^= 0x10
    with pytest.raises(FormatError, match="checksum mismatch"):
        fpk.decode(bytes(data))


def test_header_bomb_is_capped():
    bomb = b"[" + b" " * (65 << 20) + b"]"
    with pytest.raises(FormatError, match="header"):
        fpk.decode(frame(bomb, b""))


def edit(fn):
    """A hostile file: the tiny example's header (version 3: every key) and payload after ``fn(header, payload)``."""
    header, payload = split(fpk.encode(tiny_example(), version=3))
    payload = bytearray(payload)
    result = fn(header, payload)
    return frame(header, bytes(result if isinstance(result, (bytes, bytearray)) else payload))


W, B = 0, 1  # index of the weight and the bias in the example's header


def setter(path, value):
    def fn(h, p):
        obj = h
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return fn


HOSTILE = {
    "not json": (lambda: frame(b"{nope", b""), "not valid UTF-8 JSON"),
    "not utf-8": (lambda: frame(b'{"a":"\xff"}', b""), "not valid UTF-8 JSON"),
    "deep nesting": (lambda: frame(b"[" * 100_000 + b"]" * 100_000, b""), "JSON"),
    "header not zlib": (lambda: frame_raw_header(b"garbage!"), "not valid zlib"),
    "top-level list": (lambda: frame([], b""), "must be a JSON object"),
    "unknown top key": (lambda: edit(setter(["extra"], 1)), "unknown key 'extra'"),
    "meta not object": (lambda: edit(setter(["meta"], [1])), "wrong type"),
    "unknown kind": (lambda: edit(setter(["tensors", W, "kind"], "sparse")), "unknown kind"),
    "unhashable kind": (lambda: edit(setter(["tensors", W, "kind"], ["raw"])), "unknown kind"),
    "unknown entry key": (lambda: edit(setter(["tensors", B, "extra"], 1)), "unknown key"),
    "missing key": (lambda: edit(lambda h, p: h["tensors"][B].pop("dtype")), "missing key 'dtype'"),
    "empty name": (lambda: edit(setter(["tensors", B, "name"], "")), "bad name"),
    "long name": (lambda: edit(setter(["tensors", B, "name"], "x" * 1025)), "bad name"),
    "name not str": (lambda: edit(setter(["tensors", B, "name"], 5)), "bad name"),
    "duplicate name": (lambda: edit(setter(["tensors", B, "name"], "fc.weight")), "appears twice"),
    "alias chain": (lambda: edit(lambda h, p: h["tensors"].append(alias("x", "head.weight"))), "non-alias"),
    "alias forward": (lambda: edit(lambda h, p: h["tensors"].insert(0, alias("x", "fc.bias"))), "non-alias"),
    "alias missing": (lambda: edit(setter(["tensors", 2, "target"], "nope")), "non-alias"),
    "alias unhashable": (lambda: edit(setter(["tensors", 2, "target"], {})), "non-alias"),
    "huge shape": (lambda: edit(setter(["tensors", B, "shape"], [2**20, 2**20])), "max_elements"),
    "huge quant": (lambda: edit(setter(["tensors", W, "shape"], [2**40])), "max_elements"),
    "huge dim times zero": (lambda: edit(setter(["tensors", B, "shape"], [0, 2**62])), "max_elements"),
    "too many dims": (lambda: edit(setter(["tensors", B, "shape"], [1] * 9)), "shape"),
    "negative dim": (lambda: edit(setter(["tensors", B, "shape"], [-2])), "shape"),
    "float dim": (lambda: edit(setter(["tensors", B, "shape"], [2.0])), "shape"),
    "bool dim": (lambda: edit(setter(["tensors", B, "shape"], [True, True])), "shape"),
    "shape not list": (lambda: edit(setter(["tensors", B, "shape"], 2)), "shape"),
    "unknown dtype": (lambda: edit(setter(["tensors", B, "dtype"], "complex64")), "unknown dtype"),
    "raw wrong size": (lambda: edit(setter(["tensors", B, "shape"], [3])), "add up|needs"),
    "unknown encoding": (lambda: edit(setter(["tensors", B, "data", "encoding"], "lz4")), "unknown encoding"),
    "lengths short": (lambda: edit(setter(["tensors", B, "data", "length"], 7)), "add up"),
    "lengths long": (lambda: edit(lambda h, p: p.extend(b"\x00")), "add up"),
    "negative length": (lambda: edit(setter(["tensors", B, "data", "length"], -1)), "length"),
    "bits 0": (lambda: edit(setter(["tensors", W, "groups", 0, "bits"], 0)), "bits/exp"),
    "bits 17": (lambda: edit(setter(["tensors", W, "groups", 0, "bits"], 17)), "bits/exp"),
    "exp out of range": (lambda: edit(setter(["tensors", W, "groups", 0, "exp"], 65)), "bits/exp"),
    "bad grid": (lambda: edit(setter(["tensors", W, "groups", 0, "grid"], "log")), "grid"),
    "no groups": (lambda: edit(setter(["tensors", W, "groups"], [])), "groups"),
    "17 groups": (lambda: edit(setter(["tensors", W, "groups"], [group()] * 17)), "groups"),
    "counts vs kept": (lambda: edit(setter(["tensors", W, "groups", 0, "count"], 3)), "sum to kept"),
    "kept > numel": (lambda: edit(setter(["tensors", W, "kept"], 9)), "kept"),
    "ids missing": (lambda: edit(lambda h, p: h["tensors"][W].pop("ids")), "group ids"),
    "codes per group": (lambda: edit(lambda h, p: h["tensors"][W]["codes"].pop()), "code stream per group"),
    "ans for 13 bits": (lambda: edit(set_bits_13_ans), "bits <= 12"),
    "gap width 33": (lambda: edit(set_mask({"encoding": "gaps", "length": 1, "width": 33})), "gap width"),
    "gaps missing width": (lambda: edit(set_mask({"encoding": "gaps", "length": 1})), "missing key 'width'"),
    "mask all but sparse": (lambda: edit(set_mask({"encoding": "all", "length": 1})), "mask 'all'"),
    "bitmap popcount": (lambda: edit(lambda h, p: p.__setitem__(0, 0x97)), "kept entries"),
    "bitmap length": (lambda: edit(set_mask({"encoding": "bitmap", "length": 0}, b"")), "needs exactly 1"),
    "packed padding": (lambda: edit(lambda h, p: p.__setitem__(3, 0x81)), "padding"),
    "ids out of range": (lambda: edit(bad_ids), "group id"),
    "ids vs counts": (lambda: edit(lambda h, p: p.__setitem__(1, 0x70)), "group counts"),
    "gaps past end": (
        lambda: edit(set_mask({"encoding": "gaps", "length": 2, "width": 4}, b"\xff\xff")),
        "past the end",
    ),
    "bad rANS": (lambda: edit(set_codes_ans(b"\x08\x01\x80\x02\x00\x00\x02\x00")), "corrupt"),
    "rANS bomb": (lambda: edit(set_codes_ans(b"\x08\x01\x80\x02\x00\x00\x01\x00", count=600)), "refusing"),
    "bool byte 2": (lambda: edit(bool_bias(b"\x01\x02")), "0 or 1"),
    "zlib wrong size": (lambda: edit(zlib_bias(zlib.compress(bytes(12)))), "wrong size"),
    "zlib trailing": (lambda: edit(zlib_bias(zlib.compress(bytes(8)) + b"\x00")), "single complete"),
    "zlib garbage": (lambda: edit(zlib_bias(b"\x00\x01\x02")), "not valid zlib"),
}


def frame_raw_header(h: bytes) -> bytes:
    body = PRE.pack(fpk.MAGIC, 1, len(h), 0) + h
    return body + struct.pack("<I", zlib.crc32(body))


def alias(name, target):
    return {"kind": "alias", "name": name, "target": target}


def group():
    return {"bits": 1, "exp": 0, "grid": "int", "count": 0}


def set_bits_13_ans(h, p):
    h["tensors"][W]["groups"][0]["bits"] = 13
    h["tensors"][W]["codes"][0]["encoding"] = "ans"


def set_mask(stream, mask_bytes=b"\x96"):
    def fn(h, p):
        h["tensors"][W]["mask"] = stream
        return mask_bytes + p[1:]  # the example's mask stream is its first byte

    return fn


def bad_ids(h, p):
    h["tensors"][W]["groups"] += [group()] * 2  # 4 groups: ids take 2 bits, the codes stay put
    h["tensors"][W]["codes"] += [{"encoding": "packed", "length": 0}] * 2
    p[1] = 0b11000000  # id 3 is fine, but ...
    h["tensors"][W]["groups"].pop()  # ... now only 3 groups: id 3 is out of range
    h["tensors"][W]["codes"].pop()


def set_codes_ans(stream, count=None):
    def fn(h, p):
        g = h["tensors"][W]["groups"][1]
        if count is not None:
            g["count"] = count
            h["tensors"][W]["groups"][0]["count"] = 0
            h["tensors"][W]["kept"] = count
            h["tensors"][W]["shape"] = [count]
            h["tensors"][W]["mask"] = {"encoding": "all", "length": 0}
            h["tensors"][W].pop("ids")
            h["tensors"][W]["groups"] = [g]
            h["tensors"][W]["codes"] = [{"encoding": "ans", "length": len(stream)}]
            return stream + p[4:]
        h["tensors"][W]["codes"][1] = {"encoding": "ans", "length": len(stream)}
        return p[:3] + stream + p[4:]

    return fn


def bool_bias(data):
    def fn(h, p):
        h["tensors"][B]["dtype"] = "bool"
        h["tensors"][B]["data"]["length"] = 2
        return p[:4] + data

    return fn


def zlib_bias(data):
    def fn(h, p):
        h["tensors"][B]["data"] = {"encoding": "zlib", "length": len(data)}
        return p[:4] + data

    return fn


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_headers(case):
    make, message = HOSTILE[case]
    data = make()
    with pytest.raises(FormatError, match=message) as err:
        fpk.decode(data)
    assert "\n" not in str(err.value)


def lean_edit(fn):
    """A version-4 file: the tiny example's lean header and payload after ``fn(header, payload)``."""
    header, payload = split(fpk.encode(tiny_example()))
    fn(header, payload)
    return frame(header, payload, version=4)


LEFT_OUT = {  # version 4: a key that follows from the rest must be left out
    "raw data length": ([B, "data", "length"], 8),
    "bitmap mask length": ([W, "mask", "length"], 1),
    "ids length": ([W, "ids", "length"], 1),
    "packed codes length": ([W, "codes", 0, "length"], 1),
}


@pytest.mark.parametrize("case", LEFT_OUT)
def test_version_4_refuses_a_key_it_leaves_out(case):
    path, value = LEFT_OUT[case]
    assert_identical(tiny_example(), fpk.decode(lean_edit(lambda h, p: None)))
    with pytest.raises(FormatError, match="must be left out in version 4"):
        fpk.decode(lean_edit(lambda h, p: setter(["tensors", *path], value)(h, p)))


def test_version_4_puts_back_kept_and_count_and_checks_what_they_follow_from():
    codes = np.arange(6, dtype=np.uint16)
    one = Compressed({"w": QuantTensor((6,), np.ones(6, bool), np.zeros(6, np.uint8), codes, (3,), (-2,), ("int",))})
    data = fpk.encode(one)
    header, payload = split(data)
    entry = header["tensors"][0]
    assert "kept" not in entry and "count" not in entry["groups"][0] and "length" not in entry["mask"]
    assert fpk.describe(data)["tensors"][0]["kept"] == 6 and fpk.encode(one, version=3) != data
    assert_identical(one, fpk.decode(data))
    for key in ("kept", "count"):
        bad = json.loads(json.dumps(header))
        (bad["tensors"][0] if key == "kept" else bad["tensors"][0]["groups"][0])[key] = 6
        with pytest.raises(FormatError, match="must be left out in version 4"):
            fpk.decode(frame(bad, payload, version=4))
    # what a left-out length follows from is checked: one more entry needs one more byte of codes
    bad = json.loads(json.dumps(header))
    bad["tensors"][0]["shape"] = [9]  # 27 bits of codes: 4 bytes
    with pytest.raises(FormatError, match="codes length is out of range"):  # 4 bytes, past the 3 of the payload
        fpk.decode(frame(bad, payload, version=4))
    bad["tensors"][0]["groups"][0]["bits"] = "3"
    with pytest.raises(FormatError, match="bad bits/exp"):
        fpk.decode(frame(bad, payload, version=4))
    # a version-3 header must list them all
    with pytest.raises(FormatError, match="missing key 'kept'"):
        fpk.decode(frame(header, payload, version=3))


def test_edit_helper_round_trips_unchanged():
    assert_identical(tiny_example(), fpk.decode(edit(lambda h, p: None)))


def decode_or_format_error(data: bytes) -> None:
    """Hostile input may decode (if it happens to be valid) or raise FormatError, never anything else."""
    try:
        c = fpk.decode(data)
    except FormatError as exc:
        assert "\n" not in str(exc)
    else:
        c.state_dict()


def test_fuzz_payload_bytes_behind_a_valid_checksum():
    header, payload = split(fpk.encode(small_model()))
    rng = np.random.default_rng(10)
    for _ in range(300):
        bad = bytearray(payload)
        for pos in rng.integers(len(bad), size=int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(256))
        decode_or_format_error(frame(header, bytes(bad), version=fpk.VERSION))


def test_fuzz_header_integers_behind_a_valid_checksum():
    data = fpk.encode(small_model())
    text = inflate_header(data[PRE.size : PRE.size + PRE.unpack_from(data)[2]], fpk.VERSION).decode()
    _, payload = split(data)
    spots = [m.span() for m in re.finditer(r"-?\d+", text)]
    rng = np.random.default_rng(11)
    for _ in range(300):
        a, b = spots[int(rng.integers(len(spots)))]
        value = [-1, 0, 1, 2, 7, 13, 17, 64, 65, 255, 2**31, 2**64, 10**30][int(rng.integers(13))]
        edited = text[:a].encode() + str(value).encode() + text[b:].encode()
        decode_or_format_error(frame(edited, payload, version=fpk.VERSION))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=3),
    density=st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]),
    bits=st.lists(st.integers(1, 16), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    entropy=st.booleans(),
)
def test_random_quant_tensors_round_trip(shape, density, bits, seed, entropy):
    rng = np.random.default_rng(seed)
    numel = math.prod(shape)
    mask = rng.random(numel) < density
    groups = rng.integers(0, len(bits), size=int(mask.sum()))
    grids = tuple(rng.choice(["int", "odd"]) for _ in bits)
    exps = tuple(int(e) for e in rng.integers(-64, 65, size=len(bits)))
    q = quant(mask, groups, bits=tuple(bits), exps=exps, grids=grids, shape=tuple(shape), seed=seed)
    round_trip(Compressed({"q": q}), entropy)


def test_max_elements_is_a_knob():
    data = fpk.encode(small_model())
    with pytest.raises(FormatError, match="pass a larger max_elements"):
        fpk.decode(data, max_elements=1000)
    fpk.decode(data, max_elements=3031)


# ---------------------------------------------------------------- a realistic size measurement


def test_realistic_sparse_laplace_layer(record_property):
    """500x800, 2% kept at random positions, 5-bit codes from a rounded Laplace: entropy coding must
    land within a few percent of the ideal (binomial mask entropy + empirical code entropy)."""
    rng = np.random.default_rng(9)
    numel, kept = 500 * 800, 8000
    mask = np.zeros(numel, dtype=bool)
    mask[rng.choice(numel, kept, replace=False)] = True
    codes = np.clip(np.round(rng.laplace(0, 1.5, kept)) + 16, 0, 31)
    c = Compressed({"w": quant(mask, codes=codes, bits=(5,), shape=(500, 800))})
    on, off = round_trip(c, True), round_trip(c, False)
    ideal_mask = (math.lgamma(numel + 1) - math.lgamma(kept + 1) - math.lgamma(numel - kept + 1)) / math.log(2) / 8
    ideal = ideal_mask + ideal_bits(np.bincount(codes.astype(int))) / 8
    record_property("bytes_entropy_on", len(on))
    record_property("bytes_entropy_off", len(off))
    record_property("bytes_ideal", round(ideal))
    print(f"\n500x800 @2%: entropy on {len(on)} B, off {len(off)} B, ideal {ideal:.0f} B")
    assert len(on) < 0.8 * len(off)
    assert len(on) < 1.05 * ideal + 300  # header and tables


# ---------------------------------------------------------------- version 1 files and bounded work


def test_version_1_files_still_load():
    """A file written by fisherpack 0.1 (format version 1, the LeNet-5 reference file of that
    release): it loads, and rewritten in version 1 it gives back the very same bytes."""
    old = (Path(__file__).parent / "data" / "lenet5-v1.fpk").read_bytes()
    assert fpk.describe(old)["version"] == 1
    c = fpk.decode(old)
    assert fpk.encode(c, version=1) == old
    new = fpk.encode(c)
    assert fpk.describe(new)["version"] == 4 and len(new) <= len(old) - 300  # the version-3 header and lean entries
    assert_identical(c, fpk.decode(new))


def test_version_2_files_read_and_rewrite_as_they_were_and_versions_3_and_4_are_smaller():
    """A file written in version 2 (a zlib header: the LeNet-5 reference file of fisherpack before
    version 3) decodes, re-encodes in version 2 to the very same bytes, and in versions 3 and 4 only
    its header changes, by hundreds of bytes: version 3 compresses the same JSON better, version 4
    also leaves out the keys that follow from the rest."""
    old = (Path(__file__).parent / "data" / "lenet5-v2.fpk").read_bytes()
    c = fpk.decode(old)
    assert fpk.describe(old)["version"] == 2 and fpk.encode(c, version=2) == old
    v3, v4 = fpk.encode(c, version=3), fpk.encode(c)
    assert split(v3) == split(old)  # the same header JSON and payload bytes
    assert fpk.describe(v3)["version"] == 3 and len(v3) == len(old) - 395
    assert split(v4)[1] == split(old)[1] and split(v4)[0]["meta"] == split(old)[0]["meta"]
    assert fpk.describe(v4)["version"] == 4 and len(v4) == len(old) - 430
    assert fpk.describe(v4)["tensors"] == fpk.describe(old)["tensors"]  # what was left out is put back


def test_many_tiny_rans_streams_cost_work_linear_in_the_file(monkeypatch):
    """Issue 16: thousands of tiny valid rANS streams, each with a precision-16 table declaring a
    4096-symbol alphabet. Decoding builds tables of the symbols listed (1-2 entries), never 2**16
    entries a stream: the table entries built plus symbols decoded stay below 64 per file byte."""
    built = []
    real = entropy.read_table_lists

    def counting(data, max_alphabet):
        out = real(data, max_alphabet)
        built.append(len(out[0]))
        return out

    monkeypatch.setattr(entropy, "read_table_lists", counting)
    n = 3000
    for version in (1, 2):
        freqs = np.zeros(4096, dtype=np.int64)
        freqs[[0, 4095]] = 1 << 15
        index = np.zeros(4096, dtype=np.int32)
        index[4095] = 1
        coder = entropy._encode_v2 if version == 2 else entropy._encode_v1
        codes = entropy.write_table(freqs, 16) + coder(np.array([4095, 0, 4095]), index, freqs[[0, 4095]], 16)
        entries = [
            {"name": f"t{i}", "kind": "quant", "shape": [3], "kept": 3, "mask": {"encoding": "all", "length": 0},
             "groups": [{"bits": 12, "exp": 0, "grid": "int", "count": 3}],
             "codes": [{"encoding": "ans", "length": len(codes)}]}
            for i in range(n)
        ]  # fmt: skip
        data = frame({"meta": {}, "tensors": entries}, codes * n, version=version)
        built.clear()
        c = fpk.decode(data)
        assert len(built) == n and max(built) == 2
        assert sum(built) + 3 * n <= 64 * len(data)
        assert c.tensors["t7"].codes.tolist() == [4095, 0, 4095]


# ---------------------------------------------------------------- streaming save, lazy read


def _mixed() -> Compressed:
    import fuzzcases

    return fpk.decode(fuzzcases.mixed_file())


def test_save_streams_the_same_bytes_as_encode(tmp_path):
    c = _mixed()
    path = tmp_path / "m.fpk"
    assert fpk.save(c, path) == path.stat().st_size
    assert path.read_bytes() == fpk.encode(c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fpk"]  # no spill or temp file left


def test_lazy_reader_lists_names_and_decodes_one_tensor(tmp_path):
    c = _mixed()
    path = tmp_path / "m.fpk"
    fpk.save(c, path)
    full = c.state_dict()
    with fpk.open_file(path) as r:
        assert r.names() == list(c.tensors) and r.meta == c.meta and r.version == fpk.VERSION
        for name in reversed(r.names()):  # any order, one at a time
            assert r.shape(name) == tuple(full[name].shape)
            t = r.tensor(name)
            assert t.dtype == full[name].dtype and torch.equal(t, full[name]), name
            if not isinstance(c.tensors[name], Alias):
                assert_identical(Compressed({name: c.tensors[name]}), Compressed({name: r.entry(name)}))


def _all_via_reader(path) -> str:
    try:
        with fpk.open_file(path) as r:
            for name in r.names():
                r.entry(name)
    except FormatError as exc:
        return str(exc)
    return "ok"


def _all_via_decode(data: bytes) -> str:
    try:
        fpk.decode(data)
    except FormatError as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_lazy_reader_fails_like_decode_on_hostile_files(case, tmp_path):
    data = HOSTILE[case][0]()
    path = tmp_path / "h.fpk"
    path.write_bytes(data)
    assert _all_via_reader(path) == _all_via_decode(data) != "ok"


def test_lazy_reader_fails_like_decode_at_every_truncation(tmp_path):
    data = fpk.encode(_mixed())
    path = tmp_path / "t.fpk"
    for cut in list(range(0, 64)) + list(range(64, len(data), 97)):
        path.write_bytes(data[:cut])
        assert _all_via_reader(path) == _all_via_decode(data[:cut]) != "ok", cut
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 4
    path.write_bytes(bytes(flipped))
    assert _all_via_reader(path) == "checksum mismatch: the file is corrupt"


def test_lazy_reader_reads_a_pipe_once(tmp_path):
    import os
    import threading

    data = fpk.encode(tiny_example())
    fifo = tmp_path / "pipe.fpk"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    with fpk.open_file(fifo) as r:
        assert r.names() == ["fc.weight", "fc.bias", "head.weight"]
        assert torch.equal(r.tensor("head.weight"), tiny_example().state_dict()["fc.weight"])
    writer.join(timeout=10)


def test_format_md_holds_the_header_dictionary_byte_for_byte():
    from fisherpack.fpk.dictionary import HEADER_DICT

    assert "".join(doc_block("header-dictionary").splitlines()).encode("ascii") == HEADER_DICT
    assert len(HEADER_DICT) == 1_839 and HEADER_DICT.isascii()
