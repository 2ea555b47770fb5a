"""The .fpk file: encode / decode / save / load / describe. The byte-level spec is docs/FORMAT.md.

Layout (little-endian): magic ``\\x89FPK\\r\\n\\x1a\\n``, u16 version, u32 header length H, u64
payload length P, H bytes of compressed JSON header (raw DEFLATE with a preset dictionary since
version 3), P bytes of payload (every stream of every tensor, concatenated in header order; the
header stores only lengths), u32 CRC-32 of all the bytes before it. header.py checks sizes and the
CRC first, then schema.py validates the whole header before this module allocates or indexes anything;
anything malformed raises FormatError with a one-line reason.
This module turns tensors into streams (decoding.py turns them back; both are exported here).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import torch

from ..errors import ConfigError
from . import bits as pack
from . import entropy as rans
from . import gaps as sparse
from .decoding import decode, decode_entry, load
from .fileio import atomic_writer
from .header import (
    DTYPES,
    MAGIC,
    MAX_ANS_BITS,
    MAX_NAME,
    PRE,
    READ_VERSIONS,
    VERSION,
    deflate_header,
    inflate_header,
    parse,
    read_bytes,
    stream_version,
)
from .meta import compress_config as recorded_config
from .meta import stripped as stripped_meta
from .meta import with_entropy
from .reader import FpkReader, describe, open_file
from .schema import lean
from .tensors import Alias, Compressed, QuantTensor, RawTensor

__all__ = ["MAGIC", "VERSION", "DTYPES", "encode", "decode", "decode_entry", "save", "read_bytes", "load", "describe"]
__all__ += ["open_file", "FpkReader"]

_DTYPE_NAMES = {t: name for name, (t, _) in DTYPES.items()}


# ---------------------------------------------------------------- encoding


def _smallest(cands: list[tuple[dict, bytes]]) -> tuple[dict, bytes]:
    """The shortest candidate stream; ties go to the earlier one, so the output is deterministic."""
    return min(cands, key=lambda c: len(c[1]))


def _encode_raw(t: torch.Tensor, entropy_on: bool) -> tuple[dict, list]:
    t = t.detach().cpu().contiguous()
    if t.dtype not in _DTYPE_NAMES:
        raise ConfigError(f"cannot store dtype {t.dtype}; supported: {', '.join(DTYPES)}")
    name = _DTYPE_NAMES[t.dtype]
    arr = (t.view(torch.int16) if name == "bfloat16" else t).numpy()
    data = arr.astype(DTYPES[name][1]).tobytes()  # bool -> 0/1 bytes
    cands = [({"encoding": "plain", "length": len(data)}, data)]
    if entropy_on and data:
        z = zlib.compress(data, 9)
        cands.append(({"encoding": "zlib", "length": len(z)}, z))
    s, blob = _smallest(cands)
    return {"kind": "raw", "dtype": name, "shape": list(t.shape), "data": s}, [blob]


def _encode_mask(q: QuantTensor, entropy_on: bool, version: int) -> tuple[dict, bytes]:
    gaps = sparse.mask_to_gaps(q.mask)  # (kept,) int64
    width = int(gaps.max()).bit_length() if gaps.size else 0
    cands = [({"encoding": "bitmap"}, np.packbits(q.mask).tobytes())]
    if q.kept == q.numel:
        cands.insert(0, ({"encoding": "all"}, b""))
    if width <= 32:
        cands.append(({"encoding": "gaps", "width": width}, pack.pack_bits(gaps, width) if width else b""))
    if entropy_on and gaps.size:
        k, extra = sparse.exp_golomb_split(gaps)
        budget = min(len(c[1]) for c in cands) - len(extra)
        buckets = rans.encode_stream(k, 65, budget=budget, version=version) if budget > 0 else None
        if buckets is not None:
            cands.append(({"encoding": "gaps_ans", "buckets_length": len(buckets)}, buckets + extra))
    s, blob = _smallest(cands)
    return {**s, "length": len(blob)}, blob


def _encode_symbols(values: np.ndarray, width: int, alphabet: int, use_ans: bool, version: int) -> tuple[dict, bytes]:
    packed = pack.pack_bits(values, width)
    cands = [({"encoding": "packed"}, packed)]
    if use_ans and values.size:
        ans = rans.encode_stream(values, alphabet, budget=len(packed), version=version)
        if ans is not None:
            cands.append(({"encoding": "ans"}, ans))
    s, blob = _smallest(cands)
    return {**s, "length": len(blob)}, blob


def _encode_quant(q: QuantTensor, entropy_on: bool, version: int) -> tuple[dict, list]:
    counts = q.group_counts()
    groups = [
        {"bits": int(b), "exp": int(e), "grid": str(g), "count": int(n)}
        for b, e, g, n in zip(q.bits, q.exps, q.grids, counts)
    ]
    entry = {"kind": "quant", "shape": [int(d) for d in q.shape], "kept": q.kept, "groups": groups}
    entry["mask"], mask = _encode_mask(q, entropy_on, version)
    blobs = [mask]
    ngroups = len(q.bits)
    if ngroups > 1:
        entry["ids"], ids = _encode_symbols(q.groups, (ngroups - 1).bit_length(), ngroups, entropy_on, version)
        blobs.append(ids)
    entry["codes"] = []
    for g, bits in enumerate(q.bits):
        codes = q.codes[q.groups == g] if ngroups > 1 else q.codes
        s, blob = _encode_symbols(codes, bits, 1 << bits, entropy_on and bits <= MAX_ANS_BITS, version)
        entry["codes"].append(s)
        blobs.append(blob)
    return entry, blobs


def encode(c: Compressed, entropy: bool | None = None, version: int = VERSION) -> bytes:
    """The .fpk bytes of ``c``. ``entropy=False`` stores every stream plain (no rANS, no zlib);
    ``None`` follows the ``entropy`` of the config recorded in ``c.meta`` (True if none is). The
    file's recorded config always says what was done: an explicit choice overrides it there too.
    ``version`` 1 or 2 writes an older layout (for tests of reading old files).

    Deterministic: equal inputs give equal bytes. ConfigError (a ValueError) if ``c`` cannot be
    stored (bad name, alias to a missing or aliased entry, unsupported dtype, meta not JSON).
    """
    out = io.BytesIO()
    _write(c, out, io.BytesIO(), entropy, version)
    return out.getvalue()


def _write(c: Compressed, out: BinaryIO, spill: BinaryIO, entropy: bool | None, version: int) -> int:
    """Encode ``c`` tensor by tensor into ``spill`` (the payload; only one tensor's streams are in
    memory at a time), then write the file to ``out``: preamble, header, the payload copied from
    ``spill`` in 1 MiB steps, CRC. Returns the file's length."""
    if not isinstance(c.meta, dict):
        raise ConfigError(f"meta must be a dict, got {type(c.meta).__name__}")
    if version not in READ_VERSIONS:
        raise ConfigError(f"format version must be one of {READ_VERSIONS}, got {version}")
    entropy, meta = _entropy_setting(c.meta, entropy)
    entries, stored, plen = [], set(), 0
    for name, t in c.tensors.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise ConfigError(f"tensor names must be strings of 1..{MAX_NAME} characters, got {name!r}")
        if isinstance(t, Alias):
            if t.target not in stored:
                raise ConfigError(f"alias {name!r} must point to an earlier non-alias entry, not {t.target!r}")
            entry, parts = {"kind": "alias", "target": t.target}, []
        elif isinstance(t, RawTensor):
            entry, parts = _encode_raw(t.tensor, entropy)
        elif isinstance(t, QuantTensor):
            entry, parts = _encode_quant(t, entropy, stream_version(version))
        else:
            raise ConfigError(f"cannot store {type(t).__name__} for {name!r}")
        if not isinstance(t, Alias):
            stored.add(name)
        entries.append({"name": name, **entry})
        for blob in parts:
            spill.write(blob)
            plen += len(blob)
        del parts
    head = _head(meta, entries, version, plen)
    out.write(head)
    crc = zlib.crc32(head)
    spill.seek(0)
    while chunk := spill.read(1 << 20):
        out.write(chunk)
        crc = zlib.crc32(chunk, crc)
    out.write(struct.pack("<I", crc))
    return len(head) + plen + 4


def _head(meta: dict, entries: list[dict], version: int, plen: int) -> bytes:
    """Preamble and compressed header of a file of ``version`` (docs/FORMAT.md, sections 2 and 3)."""
    if version >= 4:
        entries = [lean(e) for e in entries]
    try:
        text = json.dumps({"meta": meta, "tensors": entries}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"meta must be JSON-serializable (no NaN/inf): {exc}") from None
    header = deflate_header(text.encode("utf-8"), version)
    return PRE.pack(MAGIC, version, len(header), plen) + header


def stripped(data: bytes, checked: bool = False) -> bytes:
    """The file ``data`` stripped for deployment (see fpk/meta.py): only the meta that loading needs.
    ``checked``: the caller has already decoded ``data`` (else it is checked here)."""
    if not checked:
        decode(data)
    return _restamp(data, stripped_meta)


def _restamp(data: bytes, edit: Callable[[dict], dict]) -> bytes:
    """``data`` (already checked: sizes and CRC are not checked again) with its meta edited, in the
    current version (a version-2 file's streams are version 3's; a version-1 file keeps its version,
    whose rANS data differs)."""
    _, version, hlen, plen = PRE.unpack_from(data)
    doc = parse(inflate_header(memoryview(data)[PRE.size : PRE.size + hlen], version))
    payload = memoryview(data)[PRE.size + hlen : PRE.size + hlen + plen]
    head = _head(edit(doc["meta"]), doc["tensors"], VERSION if version == 2 else version, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _entropy_setting(meta: dict, entropy: bool | None) -> tuple[bool, dict]:
    """The entropy choice to apply and the meta to record: a config in ``meta`` names the choice
    unless ``entropy`` overrides it, and then the recorded config is corrected to match."""
    config = recorded_config(meta)
    recorded = config.get("entropy") if config is not None else None
    if entropy is None:
        return (recorded if isinstance(recorded, bool) else True), meta
    if isinstance(recorded, bool) and recorded != entropy:
        meta = with_entropy(meta, entropy)
    return entropy, meta


def save(c: Compressed, path: str | os.PathLike, entropy: bool | None = None) -> int:
    """Write ``c`` to ``path`` atomically; return the number of bytes written. ``entropy`` as in
    :func:`encode`.

    Streams are encoded one tensor at a time into a temporary file beside ``path`` (the header,
    which stores their lengths, comes first in the file), then the file is written through the
    atomic writer: memory holds one tensor's streams, not the whole file.
    """
    folder = os.path.dirname(os.fspath(path)) or "."
    try:
        spill = tempfile.TemporaryFile(dir=folder if os.path.isdir(folder) else None)
    except OSError:  # an unwritable folder: the atomic writer reports it
        spill = tempfile.TemporaryFile()
    with spill, atomic_writer(path) as fh:
        return _write(c, fh, spill, entropy, VERSION)
