"""Hostile .fpk files for the fuzz suite: case generators and bombs (checked by fuzzcases.py).

Each generator takes a well-formed file and yields damaged variants; all randomness comes from the
numpy Generator passed in, so a seed reproduces a run. Most variants are re-signed (correct preamble
lengths and CRC-32), so that they reach the validator and the stream decoders instead of stopping at
the checksum. ``bombs`` are small files built to make a reader allocate or loop as much as the
format allows: the suite checks what each one costs.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections.abc import Iterator

import numpy as np
from fuzzcases import PRE, frame, frame_json, header_of, parts, version_of

from fisherpack.fpk.header import inflate_header

# ---------------------------------------------------------------- generators


def truncations(data: bytes) -> Iterator[bytes]:
    """Every proper prefix of the file, as a cut download leaves it."""
    return (data[:k] for k in range(len(data)))


def cut_payloads(data: bytes, step: int = 1) -> Iterator[bytes]:
    """Header intact, payload cut after every ``step``-th byte (and one byte too long), re-signed."""
    zheader, payload = parts(data)
    yield frame(zheader, payload + b"\x00")
    for k in range(0, len(payload), step):
        yield frame(zheader, payload[:k])


def cut_headers(data: bytes) -> Iterator[bytes]:
    """The compressed header cut after every byte, re-signed with the payload behind it."""
    zheader, payload = parts(data)
    for k in range(len(zheader)):
        yield frame(zheader[:k], payload)


def bit_flips(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """1 to 3 random bits flipped anywhere, not re-signed: the CRC (or the preamble) must notice."""
    for _ in range(n):
        bad = bytearray(data)
        for pos in rng.integers(len(data), size=int(rng.integers(1, 4))):
            bad[pos] ^= 1 << int(rng.integers(8))
        yield bytes(bad)


def payload_edits(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """1 to 4 payload bytes set to random, 0x00 or 0xff values, or single bits flipped; re-signed."""
    zheader, payload = parts(data)
    for _ in range(n):
        bad = bytearray(payload)
        for pos in rng.integers(len(bad), size=int(rng.integers(1, 5))):
            kind = int(rng.integers(4))
            bad[pos] = (int(rng.integers(256)), 0, 255, bad[pos] ^ (1 << int(rng.integers(8))))[kind]
        yield frame(zheader, bytes(bad))


def _streams(header: dict) -> list[dict]:
    """Every stream object of a header, in payload order."""
    out = []
    for e in header["tensors"]:
        if e["kind"] == "raw":
            out.append(e["data"])
        elif e["kind"] == "quant":
            out += [e["mask"], *([e["ids"]] if "ids" in e else []), *e["codes"]]
    return out


def stream_swaps(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """One stream replaced by random bytes of a random length, its header length adjusted; re-signed.

    Lengths stay consistent, so the stream's own decoder (bit strings, rANS tables and states,
    Exp-Golomb extra bits, zlib) sees the garbage. Often the new bytes keep a real prefix. A stream
    whose length a version-4 header leaves out keeps its length (the header cannot say another).
    """
    from fisherpack.fpk import container

    header, payload, version = header_of(data), parts(data)[1], version_of(data)
    spans, pos = [], 0
    for t in container.describe(data)["tensors"]:  # every length, also those version 4 leaves out
        for s in t["streams"]:
            spans.append((pos, pos + s["length"]))
            pos += s["length"]
    for _ in range(n):
        h = json.loads(json.dumps(header))
        streams = _streams(h)
        i = int(rng.integers(len(streams)))
        a, b = spans[i]
        size = int(rng.integers(0, 2 * (b - a) + 8)) if "length" in streams[i] else b - a
        new = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        keep = int(rng.integers(0, min(size, b - a) + 1))
        new[:keep] = payload[a : a + keep]
        if "length" in streams[i]:
            streams[i]["length"] = size
        yield frame_json(h, payload[:a] + bytes(new) + payload[b:], version)


HOSTILE_VALUES = [
    0, 1, -1, 2, 3, 7, 8, 12, 13, 16, 17, 32, 33, 63, 64, 65, 255, 256, 2**16, 2**20, 2**28, 2**31,
    2**32, 2**53, 2**63, 2**64, 10**30, -(2**63), 0.5, 1.0, -0.0, 1e308, True, False, None, "", "x",
    "all", "bitmap", "gaps", "gaps_ans", "packed", "ans", "plain", "zlib", "int", "odd", "raw", "quant",
    "alias", "float32", "bool", "bfloat16", "complex64", "dense", "bias", "fc1.weight", [], [0], [1, 1],
    [2**20, 2**20], [2**40], [-1], [0, 2**62], [1] * 9, {}, {"encoding": "packed", "length": 0},
    {"bits": 1, "exp": 0, "grid": "int", "count": 0}, {"kind": "alias", "name": "a", "target": "dense"},
]  # fmt: skip
KNOWN_KEYS = ["kind", "name", "shape", "dtype", "data", "kept", "groups", "mask", "ids", "codes", "target",
              "encoding", "length", "width", "buckets_length", "bits", "exp", "grid", "count", "extra"]  # fmt: skip


def _nodes(obj, path=()) -> list[tuple]:
    """(container, key, path) for every value in a JSON tree except the root."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append((obj, k, path + (k,)))
        out += _nodes(v, path + (k,))
    return out


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _mutate(h: dict, rng: np.random.Generator) -> None:
    """One structural edit of a header tree, in place."""
    nodes = [(c, k) for c, k, path in _nodes(h) if path[0] != "meta" or rng.random() < 0.05]
    if not nodes:  # an earlier edit emptied the header
        return
    container, key = _pick(rng, nodes)
    op = int(rng.integers(7))
    value = container[key]
    if op == 0:  # replace by a hostile value
        container[key] = json.loads(json.dumps(_pick(rng, HOSTILE_VALUES)))
    elif op == 1 and type(value) is int:  # nudge an integer
        container[key] = int(_pick(rng, [value + 1, value - 1, value * 2, value // 2, -value, value + 2**32]))
    elif op == 2 and isinstance(container, dict):  # drop a key
        del container[key]
    elif op == 3 and isinstance(value, dict):  # add a key
        value[_pick(rng, KNOWN_KEYS)] = json.loads(json.dumps(_pick(rng, HOSTILE_VALUES)))
    elif op == 4 and isinstance(value, list) and value:  # duplicate, drop or reverse list items
        i = int(rng.integers(len(value)))
        _pick(rng, [lambda: value.insert(i, json.loads(json.dumps(value[i]))), lambda: value.pop(i), value.reverse])()
    elif op == 5 and isinstance(value, dict) and "encoding" in value:  # another encoding, same length
        value["encoding"] = _pick(rng, ["all", "bitmap", "gaps", "gaps_ans", "packed", "ans", "plain", "zlib"])
        if value["encoding"] == "gaps":
            value["width"] = int(rng.integers(0, 34))
        if value["encoding"] == "gaps_ans":
            length = value.get("length")  # an earlier edit may have made it anything
            value["buckets_length"] = int(rng.integers(0, length + 2 if type(length) is int and length >= 0 else 8))
    else:  # copy another node's value here (through JSON: a copy, never a cycle)
        other, other_key, _ = _pick(rng, _nodes(h))
        container[key] = json.loads(json.dumps(other[other_key]))


def header_edits(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """1 to 3 structural edits of the JSON header (types, ranges, keys, lists, encodings); re-signed."""
    header, payload = header_of(data), parts(data)[1]
    for _ in range(n):
        h = json.loads(json.dumps(header))
        for _ in range(int(rng.integers(1, 4))):
            _mutate(h, rng)
        yield frame_json(h, payload, version_of(data))


TEXT_EDITS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1.0", b"1e2", b'"1"', b"null",
              b"true", b"9" * 5000, b"[" * 50000, b"\xff", b"\x00", b'"\\ud800"', b"{}", b"[]"]  # fmt: skip


def header_text_edits(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """Edits of the header's JSON text: non-JSON constants, huge numbers, duplicate keys, bad UTF-8."""
    zheader, payload = parts(data)
    text = bytes(inflate_header(zheader, PRE.unpack_from(data)[1]))
    numbers = [m.span() for m in re.finditer(rb"-?\d+", text)]
    keys = [m.span() for m in re.finditer(rb'"[a-z_]+":', text)]
    for _ in range(n):
        if rng.random() < 0.7:
            a, b = _pick(rng, numbers)
            edited = text[:a] + _pick(rng, TEXT_EDITS) + text[b:]
        else:  # a key written twice, once with another value
            a, b = _pick(rng, keys)
            edited = text[:a] + text[a:b] + _pick(rng, [b"0", b'"x"', b"[]"]) + b"," + text[a:]
        yield frame_json(edited, payload, version_of(data))


# ---------------------------------------------------------------- bombs: small files that claim a lot


def _entry_quant(name, n, kept, mask, codes, bits=1):
    group = {"bits": bits, "exp": 0, "grid": "int", "count": kept}
    return {"kind": "quant", "name": name, "shape": [n], "kept": kept, "groups": [group], "mask": mask, "codes": codes}


def _meta_bomb(unit: bytes, size: int) -> bytes:
    """A header whose meta holds one list of ``unit`` repeated to about ``size`` bytes of text."""
    k = (size - 64) // len(unit)
    return b'{"meta":{"a":[' + unit * (k - 1) + unit.rstrip(b",") + b']},"tensors":[]}'


def _separators(obj) -> int:
    return sum(json.dumps(obj).count(c) for c in "[{,:")


def rng_text(n: int) -> str:
    """``n`` random letters and digits (zlib squeezes them by only ~25%)."""
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
    return alphabet[np.random.default_rng(n).integers(0, alphabet.size, n)].tobytes().decode()


@functools.cache
def bombs() -> dict[str, bytes]:
    """Hostile files built to make a reader allocate or loop as much as the format lets them."""
    from fisherpack.fpk.header import HEADER_CAP, MAX_SEPARATORS, default_max_elements

    out = {}
    # Headers: just under the separator cap (parsed), far over it (refused), one 64 MiB string.
    out["header: empty lists up to the separator cap"] = frame_json(_meta_bomb(b"[],", 3 * (MAX_SEPARATORS // 2)), b"")
    out["header: 64 MiB of empty lists"] = frame_json(_meta_bomb(b"[],", HEADER_CAP), b"")
    out["header: 64 MiB string"] = frame_json(b'{"meta":{"a":"' + b"a" * (HEADER_CAP - 40) + b'"},"tensors":[]}', b"")
    out["header: 65 MiB (over the cap)"] = frame_json(b" " * (HEADER_CAP + (1 << 20)), b"")
    # A sparse tensor whose dropped tail costs nothing: as many entries as the default allows.
    gaps = {"encoding": "gaps", "width": 0, "length": 0}
    empty = _entry_quant("w", 1 << 20, 0, gaps, [{"encoding": "packed", "length": 0}])
    data = frame_json({"meta": {}, "tensors": [empty]}, b"")
    empty["shape"] = [default_max_elements(len(data))]
    out["quant: 0 of max entries kept"] = frame_json({"meta": {}, "tensors": [empty]}, b"")
    empty["shape"] = [default_max_elements(len(data)) + 1]
    out["quant: one entry over the default"] = frame_json({"meta": {}, "tensors": [empty]}, b"")
    # rANS: a one-symbol table never changes the state, so the decoder runs through every declared
    # symbol (64 per byte of rANS data, the anti-bomb maximum) before the final check fails.
    rans = b"\x08\x01\x80\x02" + (1 << 16).to_bytes(4, "little") + bytes(2 * 4095)
    n = 64 * (len(rans) - 4)
    entry = _entry_quant("w", n, n, {"encoding": "all", "length": 0}, [{"encoding": "ans", "length": len(rans)}])
    out["rans: 64 symbols per byte, 1 symbol"] = frame_json({"meta": {}, "tensors": [entry]}, rans)
    # zlib: 256 MiB of zeros in a raw float32 tensor (deflate's ~1032:1 ratio).
    z = zlib.compress(bytes(1 << 28), 9)
    raw = {
        "kind": "raw",
        "name": "b",
        "dtype": "float32",
        "shape": [1 << 26],
        "data": {"encoding": "zlib", "length": len(z)},
    }
    out["raw: zlib of 256 MiB"] = frame_json({"meta": {}, "tensors": [raw]}, z)
    # Many entries: as many tensors, and as many aliases, as the separator cap lets through.
    raw = {"kind": "raw", "name": "t0", "dtype": "uint8", "shape": [0], "data": {"encoding": "plain", "length": 0}}
    count = MAX_SEPARATORS // (_separators(raw) + 1) - 2
    tiny = [{**raw, "name": f"t{i}"} for i in range(count)]
    out["header: empty raw tensors up to the cap"] = frame_json({"meta": {}, "tensors": tiny}, b"")
    alias = {"kind": "alias", "name": "a0", "target": "t0"}
    aliases = [raw] + [{**alias, "name": f"a{i}"} for i in range(MAX_SEPARATORS // (_separators(alias) + 1) - 4)]
    out["header: aliases up to the cap"] = frame_json({"meta": {}, "tensors": aliases}, b"")
    # The most entries a 64 KiB file may declare by default (2**28): the mask and dense tensor are
    # zero pages until written, so this costs address space more than memory.
    empty["shape"] = [1 << 28]
    padded = {"meta": {"pad": ""}, "tensors": [empty]}
    while len(frame_json(padded, b"")) < 65536:  # random text: zlib cannot shrink it much
        padded["meta"]["pad"] += rng_text(4096 + len(padded["meta"]["pad"]) // 4)
    out["quant: 0 of 2**28 kept, 64 KiB file"] = frame_json(padded, b"")
    return out
