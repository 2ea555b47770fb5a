"""Decoding .fpk bytes into tensors (the inverse of container.py's encoding; spec docs/FORMAT.md).

header.py checks sizes and the CRC first, then schema.py validates the whole header before this
module allocates or indexes anything; each stream is then decoded with its own checks, and
anything malformed raises FormatError with a one-line reason.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import FormatError
from . import bits as pack
from . import entropy as rans
from . import gaps as sparse
from .header import DTYPES, PRE, inflate, no_cycle_collection, read_bytes, split, stream_version
from .reader import stream_slices
from .schema import validate
from .tensors import Alias, Compressed, QuantTensor, RawTensor

__all__ = ["decode", "decode_entry", "load"]


def _decode_raw(e: dict, blob: memoryview) -> RawTensor:
    _, npdtype = DTYPES[e["dtype"]]
    size = e["_numel"] * np.dtype(npdtype).itemsize
    what = f"tensor {e['name']!r}"
    fresh = e["data"]["encoding"] == "zlib"  # inflated into a new writable buffer: no copy needed
    if fresh:
        blob = inflate(blob, size, f"{what} data", True)
    elif len(blob) != size:
        raise FormatError(f"{what}: data is {len(blob)} bytes, {e['dtype']} {e['shape']} needs {size}")
    arr = np.frombuffer(blob, dtype=npdtype).astype(np.dtype(npdtype).newbyteorder("="), copy=not fresh)
    if e["dtype"] == "bool":
        if arr.size and int(arr.max()) > 1:
            raise FormatError(f"{what}: bool data holds a byte other than 0 or 1")
        arr = arr.view(np.bool_)  # 0/1 bytes are numpy's bools
    t = torch.from_numpy(arr.reshape(e["shape"]))  # reshaped in numpy: much cheaper per tensor than torch
    return RawTensor(t.view(torch.bfloat16) if e["dtype"] == "bfloat16" else t)


def _decode_mask(e: dict, blob: memoryview, what: str, version: int) -> np.ndarray:
    s, n, kept = e["mask"], e["_numel"], e["kept"]
    if s["encoding"] == "all":
        if kept != n or len(blob):
            raise FormatError(f"bad header: {what} mask 'all' needs kept == numel and no bytes")
        mask = np.empty(n, dtype=bool)
        mask.fill(True)  # np.ones is a Python function: twice the cost, for thousands of small tensors
        return mask
    if s["encoding"] == "bitmap":
        pack.check_bit_stream(blob, n, f"{what} mask")
        mask = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n).view(bool)  # 0/1 bytes: a bool view
        if int(mask.sum()) != kept:
            raise FormatError(f"{what}: mask bitmap has {int(mask.sum())} kept entries, header says {kept}")
        return mask
    if s["encoding"] == "gaps":
        pack.check_bit_stream(blob, kept * s["width"], f"{what} mask")
        gaps = pack.unpack_bits(blob, s["width"], kept).astype(np.int64) if s["width"] else np.zeros(kept, np.int64)
    else:  # gaps_ans: rANS-coded Exp-Golomb buckets (a gap < numel has k <= numel.bit_length())
        k = rans.decode_stream(blob[: s["buckets_length"]], kept, min(n.bit_length(), 63) + 1, version)
        return sparse.exp_golomb_mask(k, blob[s["buckets_length"] :], n, what)
    return sparse.gaps_to_mask(gaps, n, what)


def _decode_symbols(
    s: dict, blob: memoryview, count: int, width: int, alphabet: int, what: str, version: int
) -> np.ndarray:
    if s["encoding"] == "packed":
        pack.check_bit_stream(blob, count * width, what)
        return pack.unpack_bits(blob, width, count)
    return rans.decode_stream(blob, count, alphabet, version)


def _decode_one_pass(e: dict, blobs: list[memoryview], version: int) -> QuantTensor | None:
    """The common large tensor (a gaps_ans mask, one group of rANS-coded codes) decoded in one pass
    by the C decoder (``_native.gaps_codes``); None when it does not apply or anything is wrong: the
    caller then decodes the tensor stream by stream, whose checks say what, in their order."""
    s, n, kept, gs = e["mask"], e["_numel"], e["kept"], e["groups"]
    if version != 2 or s["encoding"] != "gaps_ans" or len(gs) != 1 or e["codes"][0]["encoding"] != "ans":
        return None
    if not kept or n > sparse.MAX_NUMEL:  # (the stream-by-stream decoder refuses the latter)
        return None
    buckets = rans.native_parts(blobs[0][: s["buckets_length"]], kept, min(n.bit_length(), 63) + 1)
    codes_in = rans.native_parts(blobs[-1], kept, 1 << gs[0]["bits"])
    if buckets is None or codes_in is None:
        return None
    extra = blobs[0][s["buckets_length"] :]
    mask, codes = np.zeros(n, dtype=bool), np.empty(kept, dtype=np.uint16)
    used = rans._native.gaps_codes(*buckets, extra, *codes_in, mask, codes)  # (native_parts: it is built)
    if used < 0:
        return None
    try:
        pack.check_bit_stream(extra, used, "")  # the extra bits fill their stream exactly
    except FormatError:
        return None
    g, groups = gs[0], np.zeros(kept, dtype=np.uint8)
    return QuantTensor.checked_elsewhere(
        tuple(e["shape"]), mask, groups, codes, (g["bits"],), (g["exp"],), (g["grid"],)
    )


def _decode_quant(e: dict, blobs: list[memoryview], version: int) -> QuantTensor:
    fast = _decode_one_pass(e, blobs, version)
    if fast is not None:
        return fast
    what, gs, kept = f"tensor {e['name']!r}", e["groups"], e["kept"]
    mask = _decode_mask(e, blobs[0], what, version)
    if len(gs) == 1:  # the common case, and the cheap one: every kept entry is in group 0
        g = gs[0]
        what_codes = f"{what} codes of group 0"
        codes = _decode_symbols(e["codes"][0], blobs[-1], g["count"], g["bits"], 1 << g["bits"], what_codes, version)
        groups, codes = np.zeros(kept, dtype=np.uint8), codes.astype(np.uint16, copy=False)
        return QuantTensor.checked_elsewhere(
            tuple(e["shape"]), mask, groups, codes, (g["bits"],), (g["exp"],), (g["grid"],)
        )
    ids = _decode_symbols(e["ids"], blobs[1], kept, (len(gs) - 1).bit_length(), len(gs), f"{what} ids", version)
    if kept and int(ids.max()) >= len(gs):
        raise FormatError(f"{what}: a group id is >= the number of groups")
    groups = ids.astype(np.uint8)
    if np.bincount(groups, minlength=len(gs)).tolist() != [g["count"] for g in gs]:
        raise FormatError(f"{what}: group ids do not match the header's group counts")
    codes = np.zeros(kept, dtype=np.uint16)
    for i, (g, s, blob) in enumerate(zip(gs, e["codes"], blobs[-len(gs) :])):
        codes[groups == i] = _decode_symbols(
            s, blob, g["count"], g["bits"], 1 << g["bits"], f"{what} codes of group {i}", version
        )
    bits, exps, grids = (tuple(g[k] for g in gs) for k in ("bits", "exp", "grid"))
    # Every rule of QuantTensor holds here: the header fixed numel, kept, the group counts, widths,
    # exponents and grids; each stream decoded to exactly its count of values below 2**width.
    return QuantTensor.checked_elsewhere(tuple(e["shape"]), mask, groups, codes, bits, exps, grids)


def decode(data: bytes, max_elements: int | None = None) -> Compressed:
    """Parse .fpk bytes into a :class:`Compressed`. FormatError (one line) for any malformed input.

    ``max_elements`` caps the entries (numel) of each tensor and of the whole file; decoding needs
    a few bytes per entry (about 7 more to dequantize). The default, ``header.default_max_elements``,
    allows 4096 entries per byte of file (at least 2**20, at most 2**28), so a small hostile file
    cannot claim huge tensors; pass a number to read a trusted file beyond that.
    """
    _, header, payload = split(data)
    version = PRE.unpack_from(data)[1]
    with no_cycle_collection():
        meta, entries = validate(header, len(payload), len(data), max_elements, version)
        tensors = {e["name"]: decode_entry(e, blobs, version) for e, blobs in stream_slices(entries, payload)}
    return Compressed(tensors, meta)


def decode_entry(e: dict, blobs: list[memoryview], version: int) -> QuantTensor | RawTensor | Alias:
    """One validated header entry and its streams, decoded (also used by reader.FpkReader)."""
    if e["kind"] == "alias":
        return Alias(e["target"])
    if e["kind"] == "raw":
        return _decode_raw(e, blobs[0])
    return _decode_quant(e, blobs, stream_version(version))


def load(path: str | os.PathLike, max_elements: int | None = None) -> Compressed:
    """Read and decode a .fpk file. FisherpackError if it cannot be read, FormatError if malformed."""
    return decode(read_bytes(path), max_elements=max_elements)
