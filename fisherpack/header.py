"""The .fpk container and its header: preamble, checksum, JSON header and its validation.

This is the part of a reader that runs before anything the file declares is allocated or indexed
(docs/FORMAT.md sections 2, 3 and 9); format.py decodes the streams afterwards. Every failure is a
FormatError with a one-line reason. The file is never trusted: sizes are compared with the real
byte count, the CRC is checked before the header is inflated, the header inflates to a capped size,
and every key, type, range and length of the JSON is checked against section 3 before the payload is
touched.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import torch

from .errors import FormatError
from .tensors import GRIDS, MAX_BITS, MAX_EXP, MAX_GROUPS, MIN_EXP

__all__ = ["MAGIC", "VERSION", "PRE", "DTYPES", "MAX_ANS_BITS", "MAX_NAME", "inflate", "split", "validate"]

MAGIC = b"\x89FPK\r\n\x1a\n"
VERSION = 1
PRE = struct.Struct("<8sHIQ")  # magic, version, header length, payload length
HEADER_CAP = 64 << 20  # decompressed header bytes: bounds memory on a hostile header
MAX_NAME, MAX_NDIM, MAX_ANS_BITS = 1024, 8, 12
# name -> (torch dtype, little-endian numpy dtype of the stored bytes); bfloat16 travels as int16 bits
DTYPES = {
    "float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8"), "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"), "int64": (torch.int64, "<i8"), "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"), "int8": (torch.int8, "i1"), "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "u1"),
}  # fmt: skip
_OTHER_FORMATS = [(b"PK\x03\x04", "a zip archive, e.g. a torch.save checkpoint"), (b"\x89PNG", "a PNG image")]


def inflate(data: bytes | memoryview, size: int, what: str, exact: bool) -> bytes:
    """zlib-decompress at most ``size`` bytes (exactly ``size`` if ``exact``); FormatError otherwise."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, size + 1)  # one byte more than allowed reveals an oversized stream
    except zlib.error:
        raise FormatError(f"{what} is not valid zlib data") from None
    if len(out) > size or (exact and len(out) != size):
        raise FormatError(f"{what} decompresses to the wrong size (limit {size} bytes)")
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise FormatError(f"{what} is not a single complete zlib stream")
    return out


def split(data: bytes) -> tuple[int, bytes, memoryview]:
    """Check preamble, sizes and CRC; return (header length, inflated header bytes, payload view)."""
    data = data if isinstance(data, bytes) else bytes(data)
    if len(data) < PRE.size and MAGIC.startswith(data[:8]):
        raise FormatError(f"file is truncated: {len(data)} bytes is shorter than the {PRE.size}-byte preamble")
    if data[:8] != MAGIC:
        hint = next((f"; it looks like {kind}" for sig, kind in _OTHER_FORMATS if data.startswith(sig)), "")
        raise FormatError(f"not a fisherpack file (bad magic){hint}")
    _, version, hlen, plen = PRE.unpack_from(data)
    if version != VERSION:
        newer = "; upgrade fisherpack to read it" if version > VERSION else ""
        raise FormatError(f"unsupported format version {version} (this fisherpack reads version {VERSION}){newer}")
    expected = PRE.size + hlen + plen + 4
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise FormatError(f"file is {what}: expected {expected} bytes, got {len(data)}")
    if zlib.crc32(memoryview(data)[:-4]) != struct.unpack_from("<I", data, expected - 4)[0]:
        raise FormatError("checksum mismatch: the file is corrupt")
    header = inflate(memoryview(data)[PRE.size : PRE.size + hlen], HEADER_CAP, "header", False)
    return hlen, header, memoryview(data)[PRE.size + hlen : expected - 4]


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise FormatError(f"bad header: {msg}")


def _one_of(v: Any, options: Any) -> bool:
    return isinstance(v, str) and v in options  # str first: a JSON list or object is unhashable


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _keys(obj: Any, what: str, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    _check(isinstance(obj, dict), f"{what} must be a JSON object")
    for k in sorted(set(obj) - required - optional):
        _check(False, f"{what} has unknown key {k!r}")
    for k in sorted(required - set(obj)):
        _check(False, f"{what} is missing key {k!r}")


def _stream(s: Any, what: str, encodings: dict[str, set[str]], limit: int) -> dict:
    _check(isinstance(s, dict) and _one_of(s.get("encoding"), encodings), f"{what} has an unknown encoding")
    _keys(s, what, {"encoding", "length"} | encodings[s["encoding"]])
    _check(_is_int(s["length"], 0, limit), f"{what} length is out of range")
    return s


def _numel(shape: Any, what: str, max_elements: int) -> int:
    _check(isinstance(shape, list) and len(shape) <= MAX_NDIM, f"{what} shape must be a list of <= 8 ints")
    n = 1
    for d in shape:
        _check(type(d) is int and d >= 0, f"{what} shape must hold ints >= 0")
        if d > max_elements or n * d > max_elements:
            raise FormatError(f"{what} has more than max_elements={max_elements} entries; pass a larger "
                              "max_elements if you trust this file")  # fmt: skip
        n *= d
    return n


_ENTRY_KEYS = {
    "alias": {"name", "kind", "target"},
    "raw": {"name", "kind", "dtype", "shape", "data"},
    "quant": {"name", "kind", "shape", "kept", "groups", "mask", "codes"},
}
_MASK_ENCODINGS = {"all": set(), "bitmap": set(), "gaps": {"width"}, "gaps_ans": {"buckets_length"}}


def validate(header: bytes, plen: int, max_elements: int) -> tuple[Any, list[dict]]:
    """Check every header rule that does not need the payload; return (meta, entries).

    Each entry gets ``_numel`` and ``_streams`` (its stream dicts in payload order).
    """
    try:
        doc = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError("header is not valid UTF-8 JSON") from None
    _keys(doc, "header", {"meta", "tensors"})
    _check(isinstance(doc["meta"], dict) and isinstance(doc["tensors"], list), "meta/tensors have the wrong type")
    names: dict[str, str] = {}
    total_elements = total_length = 0
    for i, e in enumerate(doc["tensors"]):
        _check(isinstance(e, dict) and _one_of(e.get("kind"), _ENTRY_KEYS), f"tensor #{i} has an unknown kind")
        name = e.get("name")
        _check(isinstance(name, str) and 1 <= len(name) <= MAX_NAME, f"tensor #{i} has a bad name")
        what = f"tensor {name!r}"
        _check(name not in names, f"{what} appears twice")
        _keys(e, what, _ENTRY_KEYS[e["kind"]], frozenset({"ids"}) if e["kind"] == "quant" else frozenset())
        names[name], e["_numel"], e["_streams"] = e["kind"], 0, []
        if e["kind"] == "alias":
            ok = _one_of(e["target"], names) and names[e["target"]] != "alias"
            _check(ok, f"{what} must alias an earlier non-alias entry")
            continue
        e["_numel"] = n = _numel(e["shape"], what, max_elements)
        total_elements += n
        if total_elements > max_elements:
            raise FormatError(f"file has more than max_elements={max_elements} entries in total; pass a "
                              "larger max_elements if you trust this file")  # fmt: skip
        if e["kind"] == "raw":
            _check(_one_of(e["dtype"], DTYPES), f"{what} has an unknown dtype")
            e["_streams"] = [_stream(e["data"], f"{what} data", {"plain": set(), "zlib": set()}, plen)]
        else:
            _validate_quant(e, what, n, plen)
        total_length += sum(s["length"] for s in e["_streams"])
    _check(total_length == plen, f"stream lengths add up to {total_length} bytes, payload is {plen}")
    return doc["meta"], doc["tensors"]


def _validate_quant(e: dict, what: str, n: int, plen: int) -> None:
    _check(_is_int(e["kept"], 0, n), f"{what} kept must be 0..numel")
    gs = e["groups"]
    _check(isinstance(gs, list) and 1 <= len(gs) <= MAX_GROUPS, f"{what} needs 1..{MAX_GROUPS} groups")
    for g in gs:
        _keys(g, f"{what} group", {"bits", "exp", "grid", "count"})
        _check(_is_int(g["bits"], 1, MAX_BITS) and _is_int(g["exp"], MIN_EXP, MAX_EXP), f"{what} bad bits/exp")
        _check(_one_of(g["grid"], GRIDS) and _is_int(g["count"], 0, n), f"{what} bad grid/count")
    _check(sum(g["count"] for g in gs) == e["kept"], f"{what} group counts do not sum to kept")
    mask = _stream(e["mask"], f"{what} mask", _MASK_ENCODINGS, plen)
    if mask["encoding"] == "gaps":
        _check(_is_int(mask["width"], 0, 32), f"{what} gap width must be 0..32")
    if mask["encoding"] == "gaps_ans":
        _check(_is_int(mask["buckets_length"], 0, mask["length"]), f"{what} buckets_length out of range")
    symbol_encodings = {"packed": set(), "ans": set()}
    _check(("ids" in e) == (len(gs) > 1), f"{what} must have group ids exactly when it has several groups")
    ids = [_stream(e["ids"], f"{what} ids", symbol_encodings, plen)] if "ids" in e else []
    codes = e["codes"]
    _check(isinstance(codes, list) and len(codes) == len(gs), f"{what} needs one code stream per group")
    for g, s in zip(gs, codes):
        _stream(s, f"{what} codes", symbol_encodings, plen)
        _check(s["encoding"] == "packed" or g["bits"] <= MAX_ANS_BITS, f"{what} ans codes need bits <= 12")
    e["_streams"] = [mask, *ids, *codes]
