"""The .fpk file: encode / decode / save / load / describe. The byte-level spec is docs/FORMAT.md.

Layout (little-endian): magic ``\\x89FPK\\r\\n\\x1a\\n``, u16 version, u32 header length H, u64
payload length P, H bytes of zlib-compressed JSON header, P bytes of payload (every stream of every
tensor, concatenated in header order; the header stores only lengths), u32 CRC-32 of all the bytes
before it. Decoding checks sizes and the CRC first, then validates the whole header before it
allocates or indexes anything, and raises FormatError with a one-line reason for anything malformed.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

import numpy as np
import torch

from . import entropy as rans
from . import pack
from .errors import FisherpackError, FormatError
from .fileio import atomic_write_bytes
from .tensors import GRIDS, MAX_BITS, MAX_EXP, MAX_GROUPS, MIN_EXP, Alias, Compressed, QuantTensor, RawTensor

__all__ = ["MAGIC", "VERSION", "DTYPES", "encode", "decode", "save", "read", "load", "describe"]

MAGIC = b"\x89FPK\r\n\x1a\n"
VERSION = 1
_PRE = struct.Struct("<8sHIQ")  # magic, version, header length, payload length
_HEADER_CAP = 64 << 20  # decompressed header bytes: bounds memory on a hostile header
_MAX_NAME, _MAX_NDIM, _MAX_ANS_BITS = 1024, 8, 12
# name -> (torch dtype, little-endian numpy dtype of the stored bytes); bfloat16 travels as int16 bits
DTYPES = {
    "float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8"), "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"), "int64": (torch.int64, "<i8"), "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"), "int8": (torch.int8, "i1"), "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "u1"),
}  # fmt: skip
_DTYPE_NAMES = {t: name for name, (t, _) in DTYPES.items()}
_OTHER_FORMATS = [(b"PK\x03\x04", "a zip archive, e.g. a torch.save checkpoint"), (b"\x89PNG", "a PNG image")]


# ---------------------------------------------------------------- encoding


def _smallest(cands: list[tuple[dict, bytes]]) -> tuple[dict, bytes]:
    """The shortest candidate stream; ties go to the earlier one, so the output is deterministic."""
    return min(cands, key=lambda c: len(c[1]))


def _encode_raw(t: torch.Tensor, entropy_on: bool) -> tuple[dict, list]:
    t = t.detach().cpu().contiguous()
    if t.dtype not in _DTYPE_NAMES:
        raise ValueError(f"cannot store dtype {t.dtype}; supported: {', '.join(DTYPES)}")
    name = _DTYPE_NAMES[t.dtype]
    arr = (t.view(torch.int16) if name == "bfloat16" else t).numpy()
    data = arr.astype(DTYPES[name][1]).tobytes()  # bool -> 0/1 bytes
    cands = [({"encoding": "plain", "length": len(data)}, data)]
    if entropy_on and data:
        z = zlib.compress(data, 9)
        cands.append(({"encoding": "zlib", "length": len(z)}, z))
    s, blob = _smallest(cands)
    return {"kind": "raw", "dtype": name, "shape": list(t.shape), "data": s}, [blob]


def _encode_mask(q: QuantTensor, entropy_on: bool) -> tuple[dict, bytes]:
    gaps = pack.mask_to_gaps(q.mask)  # (kept,) int64
    width = int(gaps.max()).bit_length() if gaps.size else 0
    cands = [({"encoding": "bitmap"}, np.packbits(q.mask).tobytes())]
    if q.kept == q.numel:
        cands.insert(0, ({"encoding": "all"}, b""))
    if width <= 32:
        cands.append(({"encoding": "gaps", "width": width}, pack.pack_bits(gaps, width) if width else b""))
    if entropy_on and gaps.size:
        k, extra = pack.exp_golomb_split(gaps)
        budget = min(len(c[1]) for c in cands) - len(extra)
        buckets = rans.encode_stream(k, 65, budget=budget) if budget > 0 else None
        if buckets is not None:
            cands.append(({"encoding": "gaps_ans", "buckets_length": len(buckets)}, buckets + extra))
    s, blob = _smallest(cands)
    return {**s, "length": len(blob)}, blob


def _encode_symbols(values: np.ndarray, width: int, alphabet: int, use_ans: bool) -> tuple[dict, bytes]:
    packed = pack.pack_bits(values, width)
    cands = [({"encoding": "packed"}, packed)]
    if use_ans and values.size:
        ans = rans.encode_stream(values, alphabet, budget=len(packed))
        if ans is not None:
            cands.append(({"encoding": "ans"}, ans))
    s, blob = _smallest(cands)
    return {**s, "length": len(blob)}, blob


def _encode_quant(q: QuantTensor, entropy_on: bool) -> tuple[dict, list]:
    counts = q.group_counts()
    groups = [
        {"bits": int(b), "exp": int(e), "grid": str(g), "count": int(n)}
        for b, e, g, n in zip(q.bits, q.exps, q.grids, counts)
    ]
    entry = {"kind": "quant", "shape": [int(d) for d in q.shape], "kept": q.kept, "groups": groups}
    entry["mask"], mask = _encode_mask(q, entropy_on)
    blobs = [mask]
    ngroups = len(q.bits)
    if ngroups > 1:
        entry["ids"], ids = _encode_symbols(q.groups, (ngroups - 1).bit_length(), ngroups, entropy_on)
        blobs.append(ids)
    entry["codes"] = []
    for g, bits in enumerate(q.bits):
        codes = q.codes[q.groups == g] if ngroups > 1 else q.codes
        s, blob = _encode_symbols(codes, bits, 1 << bits, entropy_on and bits <= _MAX_ANS_BITS)
        entry["codes"].append(s)
        blobs.append(blob)
    return entry, blobs


def encode(c: Compressed, entropy: bool = True) -> bytes:
    """The .fpk bytes of ``c``. ``entropy=False`` stores every stream plain (no rANS, no zlib).

    Deterministic: equal inputs give equal bytes. ValueError if ``c`` cannot be stored (bad name,
    alias to a missing or aliased entry, unsupported dtype, meta not JSON).
    """
    if not isinstance(c.meta, dict):
        raise ValueError(f"meta must be a dict, got {type(c.meta).__name__}")
    entries, blobs, stored = [], [], set()
    for name, t in c.tensors.items():
        if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME:
            raise ValueError(f"tensor names must be strings of 1..{_MAX_NAME} characters, got {name!r}")
        if isinstance(t, Alias):
            if t.target not in stored:
                raise ValueError(f"alias {name!r} must point to an earlier non-alias entry, not {t.target!r}")
            entry, parts = {"kind": "alias", "target": t.target}, []
        elif isinstance(t, RawTensor):
            entry, parts = _encode_raw(t.tensor, entropy)
        elif isinstance(t, QuantTensor):
            entry, parts = _encode_quant(t, entropy)
        else:
            raise ValueError(f"cannot store {type(t).__name__} for {name!r}")
        if not isinstance(t, Alias):
            stored.add(name)
        entries.append({"name": name, **entry})
        blobs.extend(parts)
    try:
        text = json.dumps({"meta": c.meta, "tensors": entries}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serializable (no NaN/inf): {exc}") from None
    header, payload = zlib.compress(text.encode("utf-8"), 9), b"".join(blobs)
    body = _PRE.pack(MAGIC, VERSION, len(header), len(payload)) + header + payload
    return body + struct.pack("<I", zlib.crc32(body))


def save(c: Compressed, path: str | os.PathLike, entropy: bool = True) -> int:
    """Write ``c`` to ``path`` atomically; return the number of bytes written."""
    data = encode(c, entropy=entropy)
    atomic_write_bytes(path, data)
    return len(data)


# ---------------------------------------------------------------- decoding


def _bomb_safe_inflate(data: bytes | memoryview, size: int, what: str, exact: bool) -> bytes:
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


def _split(data: bytes) -> tuple[int, bytes, memoryview]:
    """Check preamble, sizes and CRC; return (header length, inflated header bytes, payload view)."""
    data = data if isinstance(data, bytes) else bytes(data)
    if len(data) < _PRE.size and MAGIC.startswith(data[:8]):
        raise FormatError(f"file is truncated: {len(data)} bytes is shorter than the {_PRE.size}-byte preamble")
    if data[:8] != MAGIC:
        hint = next((f"; it looks like {kind}" for sig, kind in _OTHER_FORMATS if data.startswith(sig)), "")
        raise FormatError(f"not a fisherpack file (bad magic){hint}")
    _, version, hlen, plen = _PRE.unpack_from(data)
    if version != VERSION:
        newer = "; upgrade fisherpack to read it" if version > VERSION else ""
        raise FormatError(f"unsupported format version {version} (this fisherpack reads version {VERSION}){newer}")
    expected = _PRE.size + hlen + plen + 4
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise FormatError(f"file is {what}: expected {expected} bytes, got {len(data)}")
    if zlib.crc32(memoryview(data)[:-4]) != struct.unpack_from("<I", data, expected - 4)[0]:
        raise FormatError("checksum mismatch: the file is corrupt")
    header = _bomb_safe_inflate(memoryview(data)[_PRE.size : _PRE.size + hlen], _HEADER_CAP, "header", False)
    return hlen, header, memoryview(data)[_PRE.size + hlen : expected - 4]


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
    _check(isinstance(shape, list) and len(shape) <= _MAX_NDIM, f"{what} shape must be a list of <= 8 ints")
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


def _validate(header: bytes, plen: int, max_elements: int) -> tuple[Any, list[dict]]:
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
        _check(isinstance(name, str) and 1 <= len(name) <= _MAX_NAME, f"tensor #{i} has a bad name")
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
        _check(s["encoding"] == "packed" or g["bits"] <= _MAX_ANS_BITS, f"{what} ans codes need bits <= 12")
    e["_streams"] = [mask, *ids, *codes]


def _decode_raw(e: dict, blob: memoryview) -> RawTensor:
    tdtype, npdtype = DTYPES[e["dtype"]]
    size = e["_numel"] * np.dtype(npdtype).itemsize
    what = f"tensor {e['name']!r}"
    if e["data"]["encoding"] == "zlib":
        blob = memoryview(_bomb_safe_inflate(blob, size, f"{what} data", True))
    elif len(blob) != size:
        raise FormatError(f"{what}: data is {len(blob)} bytes, {e['dtype']} {e['shape']} needs {size}")
    arr = np.frombuffer(blob, dtype=npdtype).astype(np.dtype(npdtype).newbyteorder("="))  # a writable copy
    if e["dtype"] == "bool" and arr.size and int(arr.max()) > 1:
        raise FormatError(f"{what}: bool data holds a byte other than 0 or 1")
    t = torch.from_numpy(arr)
    t = t.view(torch.bfloat16) if e["dtype"] == "bfloat16" else t.to(tdtype) if e["dtype"] == "bool" else t
    return RawTensor(t.reshape(e["shape"]))


def _decode_mask(e: dict, blob: memoryview, what: str) -> np.ndarray:
    s, n, kept = e["mask"], e["_numel"], e["kept"]
    if s["encoding"] == "all":
        _check(kept == n and len(blob) == 0, f"{what} mask 'all' needs kept == numel and no bytes")
        return np.ones(n, dtype=bool)
    if s["encoding"] == "bitmap":
        pack.check_bit_stream(blob, n, f"{what} mask")
        mask = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n).astype(bool)
        if int(mask.sum()) != kept:
            raise FormatError(f"{what}: mask bitmap has {int(mask.sum())} kept entries, header says {kept}")
        return mask
    if s["encoding"] == "gaps":
        pack.check_bit_stream(blob, kept * s["width"], f"{what} mask")
        gaps = pack.unpack_bits(blob, s["width"], kept).astype(np.int64) if s["width"] else np.zeros(kept, np.int64)
    else:  # gaps_ans: rANS-coded Exp-Golomb buckets (a gap < numel has k <= numel.bit_length())
        k = rans.decode_stream(blob[: s["buckets_length"]], kept, min(n.bit_length(), 63) + 1)
        gaps = pack.exp_golomb_join(k, blob[s["buckets_length"] :], f"{what} mask extra bits")
    return pack.gaps_to_mask(gaps, n, what)


def _decode_symbols(s: dict, blob: memoryview, count: int, width: int, alphabet: int, what: str) -> np.ndarray:
    if s["encoding"] == "packed":
        pack.check_bit_stream(blob, count * width, what)
        return pack.unpack_bits(blob, width, count)
    return rans.decode_stream(blob, count, alphabet)


def _decode_quant(e: dict, blobs: list[memoryview]) -> QuantTensor:
    what, gs, kept = f"tensor {e['name']!r}", e["groups"], e["kept"]
    mask = _decode_mask(e, blobs[0], what)
    groups = np.zeros(kept, dtype=np.uint8)
    if len(gs) > 1:
        ids = _decode_symbols(e["ids"], blobs[1], kept, (len(gs) - 1).bit_length(), len(gs), f"{what} ids")
        if kept and int(ids.max()) >= len(gs):
            raise FormatError(f"{what}: a group id is >= the number of groups")
        groups = ids.astype(np.uint8)
        if np.bincount(groups, minlength=len(gs)).tolist() != [g["count"] for g in gs]:
            raise FormatError(f"{what}: group ids do not match the header's group counts")
    codes = np.zeros(kept, dtype=np.uint16)
    for i, (g, s, blob) in enumerate(zip(gs, e["codes"], blobs[-len(gs) :])):
        c = _decode_symbols(s, blob, g["count"], g["bits"], 1 << g["bits"], f"{what} codes of group {i}")
        codes[groups == i] = c
    bits, exps, grids = (tuple(g[k] for g in gs) for k in ("bits", "exp", "grid"))
    try:
        return QuantTensor(tuple(e["shape"]), mask, groups, codes, bits, exps, grids)
    except ValueError as exc:  # every rule is checked above; this is a second line of defence
        raise FormatError(f"{what}: {exc}") from None


def decode(data: bytes, max_elements: int = 2**28) -> Compressed:
    """Parse .fpk bytes into a :class:`Compressed`. FormatError (one line) for any malformed input.

    ``max_elements`` caps the entries of each tensor and of the whole file, so a hostile header
    cannot make this allocate more than about 10 bytes per allowed entry.
    """
    _, header, payload = _split(data)
    meta, entries = _validate(header, len(payload), max_elements)
    tensors: dict[str, QuantTensor | RawTensor | Alias] = {}
    offset = 0
    for e in entries:
        blobs = []
        for s in e["_streams"]:  # offsets are cumulative lengths, so streams never overlap
            blobs.append(payload[offset : offset + s["length"]])
            offset += s["length"]
        if e["kind"] == "alias":
            tensors[e["name"]] = Alias(e["target"])
        elif e["kind"] == "raw":
            tensors[e["name"]] = _decode_raw(e, blobs[0])
        else:
            tensors[e["name"]] = _decode_quant(e, blobs)
    return Compressed(tensors, meta)


def read(path: str | os.PathLike) -> bytes:
    """The bytes of a file for :func:`decode` / :func:`describe`; FisherpackError if it cannot be read.

    Only a file that starts with the magic is read past its first 22 bytes, so pointing fisherpack
    at a huge file of another kind fails fast instead of reading it all.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(_PRE.size)
            return data + fh.read() if data[:8] == MAGIC else data
    except OSError as exc:
        raise FisherpackError(f"cannot read {path}: {exc.strerror or exc}") from None


def load(path: str | os.PathLike, max_elements: int = 2**28) -> Compressed:
    """Read and decode a .fpk file. FisherpackError if it cannot be read, FormatError if malformed."""
    return decode(read(path), max_elements=max_elements)


def describe(data: bytes, max_elements: int = 2**28) -> dict:
    """Layout of a .fpk file without decoding tensors: preamble sizes, meta, and for each tensor its
    kind, shape, numel, dtype or kept/groups, alias target, and every stream's role, encoding, bytes.
    """
    hlen, header, payload = _split(data)
    meta, entries = _validate(header, len(payload), max_elements)
    out = []
    for e in entries:
        d = {k: v for k, v in e.items() if k in ("name", "kind", "shape", "dtype", "kept", "groups", "target")}
        roles = ["data"] if e["kind"] == "raw" else ["mask", *(["ids"] if "ids" in e else [])]
        roles += [f"codes[{i}]" for i in range(len(e.get("codes", [])))]
        d["streams"] = [{"role": r, **s} for r, s in zip(roles, e["_streams"])]
        d["bytes"] = sum(s["length"] for s in e["_streams"])
        if e["kind"] == "alias":
            d["shape"] = next(t["shape"] for t in entries if t["name"] == e["target"])
        else:
            d["numel"] = e["_numel"]
        out.append(d)
    return {"version": VERSION, "file_bytes": len(data), "header_bytes": hlen, "payload_bytes": len(payload),
            "meta": meta, "tensors": out}  # fmt: skip
