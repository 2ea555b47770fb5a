"""The header's schema: every key, type, range and length of a parsed .fpk header checked against
docs/FORMAT.md section 3 before the payload is touched, with a one-line FormatError for the first
rule a file breaks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FormatError
from .bits import packed_size
from .header import DTYPES, ELEMENTS_PER_BYTE, MAX_ANS_BITS, MAX_NAME, MAX_NDIM, default_max_elements, parse
from .meta import model_name
from .tensors import GRIDS, MAX_BITS, MAX_EXP, MAX_GROUPS, MIN_EXP

__all__ = ["validate", "lean"]

# The rules below run once per entry, and a file may list tens of thousands of entries: a message
# is formatted only once a rule fails (an f-string per check would double the cost of a valid file).


def _bad(msg: str) -> FormatError:
    return FormatError(f"bad header: {msg}")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise _bad(msg)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _keys(obj: Any, what: str, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    if type(obj) is dict:
        keys = obj.keys()
        if keys == required or (optional and required <= keys and keys <= required | optional):
            return  # the common case, without building the sorted lists the messages need
    _check(isinstance(obj, dict), f"{what} must be a JSON object")
    for k in sorted(set(obj) - required - optional):
        _check(False, f"{what} has unknown key {k!r}")
    for k in sorted(required - set(obj)):
        _check(False, f"{what} is missing key {k!r}")


def _stream(s: Any, name: str, part: str, encodings: dict[str, set[str]], limit: int) -> dict:
    """Tensor ``name``'s stream object ``part``, checked."""
    encoding = s.get("encoding") if type(s) is dict else None
    if type(encoding) is not str or encoding not in encodings:
        raise _bad(f"tensor {name!r} {part} has an unknown encoding")
    if s.keys() != encodings[encoding]:
        _keys(s, f"tensor {name!r} {part}", encodings[encoding])
    length = s["length"]
    if not (type(length) is int and 0 <= length <= limit):  # _is_int, inline: this runs for every stream
        raise _bad(f"tensor {name!r} {part} length is out of range")
    return s


def _too_many(what: str, limit: int, file_bytes: int | None) -> FormatError:
    why = (f"max_elements={limit} entries" if file_bytes is None else f"{limit} entries (the default limit for a "
           f"{file_bytes}-byte file: {ELEMENTS_PER_BYTE} per byte, at least 2**20, at most 2**28)")  # fmt: skip
    return FormatError(f"{what} has more than {why}; pass a larger max_elements if you trust this file")


def _numel(shape: Any, name: str, limit: int, file_bytes: int | None) -> int:
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise _bad(f"tensor {name!r} shape must be a list of <= 8 ints")
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise _bad(f"tensor {name!r} shape must hold ints >= 0")
        if d > limit or n * d > limit:
            raise _too_many(f"tensor {name!r}", limit, file_bytes)
        n *= d
    return n


_ENTRY_KEYS = {
    "alias": {"name", "kind", "target"},
    "raw": {"name", "kind", "dtype", "shape", "data"},
    "quant": {"name", "kind", "shape", "kept", "groups", "mask", "codes"},
}
_GROUP_KEYS = {"bits", "exp", "grid", "count"}
# encoding -> every key its stream object has
_MASK_ENCODINGS = {k: {"encoding", "length", *v} for k, v in
                   {"all": (), "bitmap": (), "gaps": ("width",), "gaps_ans": ("buckets_length",)}.items()}  # fmt: skip
_RAW_ENCODINGS = {"plain": {"encoding", "length"}, "zlib": {"encoding", "length"}}
_SYMBOL_ENCODINGS = {"packed": {"encoding", "length"}, "ans": {"encoding", "length"}}
_QUANT_OPTIONAL, _NONE = frozenset({"ids"}), frozenset()


def validate(
    header: bytes | bytearray, plen: int, file_bytes: int, max_elements: int | None, version: int = 3
) -> tuple[Any, list[dict]]:
    """Check every header rule that does not need the payload; return (meta, entries).

    ``max_elements`` None means :func:`default_max_elements` of ``file_bytes``. Each entry gets
    ``_numel`` and ``_streams`` (its stream dicts in payload order). A version-4 header's entries
    get back the keys :func:`lean` left out, after a check that they were left out.
    """
    limit = default_max_elements(file_bytes) if max_elements is None else max_elements
    shown_size = file_bytes if max_elements is None else None
    doc = parse(header)
    _keys(doc, "header", {"meta", "tensors"})
    _check(isinstance(doc["meta"], dict) and isinstance(doc["tensors"], list), "meta/tensors have the wrong type")
    model = model_name(doc["meta"])  # meta.model, or the pipeline config's model where that is absent
    ok = model is None or (isinstance(model, str) and 1 <= len(model) <= MAX_NAME)
    _check(ok, f"meta.model must be a string of 1..{MAX_NAME} characters")
    names: dict[str, str] = {}
    total_elements = total_length = 0
    for i, e in enumerate(doc["tensors"]):
        kind = e.get("kind") if type(e) is dict else None
        if type(kind) is not str or kind not in _ENTRY_KEYS:
            raise _bad(f"tensor #{i} has an unknown kind")
        name = e.get("name")
        if type(name) is not str or not 1 <= len(name) <= MAX_NAME:
            raise _bad(f"tensor #{i} has a bad name")
        if name in names:
            raise _bad(f"tensor {name!r} appears twice")
        n = -1
        if version >= 4 and kind != "alias":
            n = _numel(e.get("shape"), name, limit, shown_size)
            _implied(e, kind, name, n)
        _keys(e, f"tensor {name!r}", _ENTRY_KEYS[kind], _QUANT_OPTIONAL if kind == "quant" else _NONE)
        names[name], e["_numel"], e["_streams"] = kind, 0, []
        if kind == "alias":
            target = e["target"]
            if type(target) is not str or names.get(target, "alias") == "alias":
                raise _bad(f"tensor {name!r} must alias an earlier non-alias entry")
            continue
        e["_numel"] = n = n if n >= 0 else _numel(e["shape"], name, limit, shown_size)
        total_elements += n
        if total_elements > limit:
            raise _too_many("the file", limit, shown_size)
        if kind == "raw":
            dtype = e["dtype"]
            if type(dtype) is not str or dtype not in DTYPES:
                raise _bad(f"tensor {name!r} has an unknown dtype")
            data = _stream(e["data"], name, "data", _RAW_ENCODINGS, plen)
            e["_streams"] = [data]
            total_length += data["length"]
        else:
            _validate_quant(e, name, n, plen)
            total_length += sum(s["length"] for s in e["_streams"])
    _check(total_length == plen, f"stream lengths add up to {total_length} bytes, payload is {plen}")
    return doc["meta"], doc["tensors"]


def lean(entry: dict) -> dict:
    """A version-4 header entry: ``entry`` without the keys that follow from its other keys (docs/FORMAT.md
    section 3): the length of a plain raw tensor, of an ``all`` or ``bitmap`` mask and of a ``packed``
    stream; ``kept`` beside an ``all`` mask; the count of a tensor's only group. Idempotent."""
    if entry["kind"] == "raw":
        return {**entry, "data": _without(entry["data"], "length")} if entry["data"]["encoding"] == "plain" else entry
    if entry["kind"] != "quant":
        return entry
    out = dict(entry)
    out["mask"] = _without(entry["mask"], "length") if entry["mask"]["encoding"] in ("all", "bitmap") else entry["mask"]
    if entry["mask"]["encoding"] == "all":
        out.pop("kept", None)
    if len(entry["groups"]) == 1:
        out["groups"] = [_without(entry["groups"][0], "count")]
    if "ids" in entry and entry["ids"]["encoding"] == "packed":
        out["ids"] = _without(entry["ids"], "length")
    out["codes"] = [_without(s, "length") if s["encoding"] == "packed" else s for s in entry["codes"]]
    return out


def _without(obj: dict, key: str) -> dict:
    return {k: v for k, v in obj.items() if k != key}


def _implied(e: dict, kind: str, name: str, n: int) -> None:
    """Put back into version-4 entry ``e`` (of ``n`` entries) the keys :func:`lean` leaves out, each
    after a check that the file left it out. A key is filled in only from values of the right type
    and range; otherwise it stays out, and the check of the value it follows from reports that."""

    def fill(obj: Any, key: str, value: Any, what: str) -> None:
        if key in obj:  # the message is formatted only then (see the note at the top)
            raise _bad(f"tensor {name!r} {what} must be left out in version 4 (it follows from the rest)")
        if value is not None:
            obj[key] = value

    if kind == "raw":
        data, dtype = e.get("data"), e.get("dtype")
        if type(data) is dict and data.get("encoding") == "plain":
            known = type(dtype) is str and dtype in DTYPES
            fill(data, "length", n * np.dtype(DTYPES[dtype][1]).itemsize if known else None, "data length")
        return
    mask, gs, codes = e.get("mask"), e.get("groups"), e.get("codes")
    encoding = mask.get("encoding") if type(mask) is dict else None
    if encoding in ("all", "bitmap"):
        fill(mask, "length", 0 if encoding == "all" else packed_size(n, 1), "mask length")
    if encoding == "all":
        fill(e, "kept", n, "kept (the mask keeps every entry)")
    if type(gs) is not list or not 1 <= len(gs) <= MAX_GROUPS or any(type(g) is not dict for g in gs):
        return
    kept = e.get("kept")
    if len(gs) == 1:
        fill(gs[0], "count", kept if _is_int(kept, 0, n) else None, "count of its only group")
    ids = e.get("ids")
    if type(ids) is dict and ids.get("encoding") == "packed":
        width = (len(gs) - 1).bit_length()
        fill(ids, "length", packed_size(kept, width) if _is_int(kept, 0, n) else None, "ids length")
    if type(codes) is list and len(codes) == len(gs):
        for g, s in zip(gs, codes):
            if type(s) is dict and s.get("encoding") == "packed":
                count, bits = g.get("count"), g.get("bits")
                ok = _is_int(count, 0, n) and _is_int(bits, 1, MAX_BITS)
                fill(s, "length", packed_size(count, bits) if ok else None, "codes length")


def _validate_quant(e: dict, name: str, n: int, plen: int) -> None:
    kept, gs = e["kept"], e["groups"]
    if not _is_int(kept, 0, n):
        raise _bad(f"tensor {name!r} kept must be 0..numel")
    if type(gs) is not list or not 1 <= len(gs) <= MAX_GROUPS:
        raise _bad(f"tensor {name!r} needs 1..{MAX_GROUPS} groups")
    counted = 0
    for g in gs:  # the _is_int checks inline: this runs for every group of every entry
        if type(g) is not dict or g.keys() != _GROUP_KEYS:
            _keys(g, f"tensor {name!r} group", _GROUP_KEYS)
        bits, exp, grid, count = g["bits"], g["exp"], g["grid"], g["count"]
        if not (type(bits) is int and 1 <= bits <= MAX_BITS and type(exp) is int and MIN_EXP <= exp <= MAX_EXP):
            raise _bad(f"tensor {name!r} bad bits/exp")
        if not (type(grid) is str and grid in GRIDS and type(count) is int and 0 <= count <= n):
            raise _bad(f"tensor {name!r} bad grid/count")
        counted += count
    if counted != kept:
        raise _bad(f"tensor {name!r} group counts do not sum to kept")
    mask = _stream(e["mask"], name, "mask", _MASK_ENCODINGS, plen)
    if mask["encoding"] == "gaps" and not _is_int(mask["width"], 0, 32):
        raise _bad(f"tensor {name!r} gap width must be 0..32")
    if mask["encoding"] == "gaps_ans" and not _is_int(mask["buckets_length"], 0, mask["length"]):
        raise _bad(f"tensor {name!r} buckets_length out of range")
    if ("ids" in e) != (len(gs) > 1):
        raise _bad(f"tensor {name!r} must have group ids exactly when it has several groups")
    ids = [_stream(e["ids"], name, "ids", _SYMBOL_ENCODINGS, plen)] if "ids" in e else []
    codes = e["codes"]
    if type(codes) is not list or len(codes) != len(gs):
        raise _bad(f"tensor {name!r} needs one code stream per group")
    for g, s in zip(gs, codes):
        _stream(s, name, "codes", _SYMBOL_ENCODINGS, plen)
        if s["encoding"] != "packed" and g["bits"] > MAX_ANS_BITS:
            raise _bad(f"tensor {name!r} ans codes need bits <= 12")
    e["_streams"] = [mask, *ids, *codes]
