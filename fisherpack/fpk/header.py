"""The .fpk container and its header: preamble, checksum and the JSON header's parsing.

This is the part of a reader that runs before anything the file declares is allocated or indexed
(docs/FORMAT.md sections 2, 3 and 9); format.py decodes the streams afterwards. Every failure is a
FormatError with a one-line reason. The file is never trusted: sizes are compared with the real
byte count, the CRC is checked before the header is inflated, the header inflates to a capped size,
and every key, type, range and length of the JSON is checked against section 3 (schema.py) before
the payload is touched.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import FisherpackError, FormatError

try:  # zlib-ng inflates the same streams ~4x faster than the stdlib (files are still written by zlib)
    from zlib_ng import zlib_ng as _inflater
except ImportError:  # pragma: no cover - a platform without its wheels
    _inflater = zlib
from .dictionary import HEADER_DICT

__all__ = ["MAGIC", "VERSION", "PRE", "DTYPES", "MAX_ANS_BITS", "MAX_NAME", "HEADER_CAP", "MAX_SEPARATORS"]
__all__ += ["READ_VERSIONS"]
__all__ += ["MAX_ELEMENTS", "ELEMENTS_PER_BYTE", "MIN_ELEMENTS", "default_max_elements"]
__all__ += ["inflate", "check_preamble", "read_bytes", "read_from", "split", "parse"]
__all__ += ["deflate_header", "inflate_header", "stream_version"]

MAGIC = b"\x89FPK\r\n\x1a\n"
# The version written. 3, 2 (a zlib header) and 1 (fisherpack 0.1: zlib header, 16-bit rANS words)
# are still read; 3 differs from 2 only in its header, raw DEFLATE with a preset dictionary; 4 from
# 3 only in its header's entries, which leave out what follows from the rest (schema.lean).
VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)
PRE = struct.Struct("<8sHIQ")  # magic, version, header length, payload length
MAX_NAME, MAX_NDIM, MAX_ANS_BITS = 1024, 8, 12
# Caps that bound a reader's memory whatever the file says (docs/FORMAT.md section 9).
HEADER_CAP = 64 << 20  # bytes of decompressed header text
MAX_STREAM = 4 << 30  # bytes a reader takes from a pipe or device (a regular file's size is checked instead)
# The JSON parser builds an object of up to ~70 bytes per value, and a value costs as little as one
# byte of text ("[]," or "{},"): capping the separators "[ { , :" caps the values, so a 64 MiB header
# of empty lists (a 65 KB file) parses into ~18 MB instead of 1.6 GB. It also caps the entries a
# header may list, and with them the per-entry work of every reader (10-30 us of Python per entry
# in describe, decode, the state dict and the safetensors export): with 2**18 the most entries a
# file can list (~16k raw tensors, ~7.7k one-group quant tensors, ~37k aliases) take well under a
# second in each. A 16-group quant entry has ~270 separators, a one-group one ~34, a raw one ~16;
# real models list hundreds to a few thousand tensors.
MAX_SEPARATORS = 1 << 18
# Entries (numel) of all tensors. A sparse tensor's dropped tail costs no bytes, so a tiny file could
# declare 2**28 entries; by default a file may declare 4096 per byte of its size (a 1 KB file at
# most 4M entries, ~20 MB decoded; a real LeNet-5 pruned to 2% has ~35 per byte), at least 2**20 and
# at most 2**28. A caller who trusts a file passes max_elements to lift this.
MAX_ELEMENTS, ELEMENTS_PER_BYTE, MIN_ELEMENTS = 1 << 28, 4096, 1 << 20
# name -> (torch dtype, little-endian numpy dtype of the stored bytes); bfloat16 travels as int16 bits
DTYPES = {
    "float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8"), "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"), "int64": (torch.int64, "<i8"), "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"), "int8": (torch.int8, "i1"), "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "u1"),
}  # fmt: skip
_OTHER_FORMATS = [(b"PK\x03\x04", "a zip archive, e.g. a torch.save checkpoint"), (b"\x89PNG", "a PNG image")]


def default_max_elements(file_bytes: int) -> int:
    """The entries a file of ``file_bytes`` bytes may declare by default (see MAX_ELEMENTS)."""
    return min(MAX_ELEMENTS, max(MIN_ELEMENTS, ELEMENTS_PER_BYTE * file_bytes))


def stream_version(version: int) -> int:
    """The rANS layout of a file's streams (entropy.STREAM_VERSIONS) for its format version."""
    return 1 if version == 1 else 2


def deflate_header(text: bytes, version: int) -> bytes:
    """The header bytes of a file of ``version``: zlib (1, 2) or raw DEFLATE with HEADER_DICT (3, 4)."""
    if version < 3:
        return zlib.compress(text, 9)
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=HEADER_DICT)
    return c.compress(text) + c.flush()


def inflate_header(data: bytes | memoryview, version: int) -> bytearray:
    """The header text of a file of ``version`` (see :func:`deflate_header`), at most HEADER_CAP bytes."""
    return inflate(data, HEADER_CAP, "header", False, raw=version >= 3)


def inflate(data: bytes | memoryview, size: int, what: str, exact: bool, raw: bool = False) -> bytearray:
    """zlib-decompress at most ``size`` bytes (exactly ``size`` if ``exact``); FormatError otherwise.
    ``raw``: a raw DEFLATE stream with the HEADER_DICT preset dictionary (a version-3 header).

    Works 1 MiB at a time into one growing buffer, so memory follows the output actually produced
    (never ``size`` up front) and the result is writable without another copy.
    """
    d = _inflater.decompressobj(wbits=-15, zdict=HEADER_DICT) if raw else _inflater.decompressobj()
    out, src, kind = bytearray(), data, "DEFLATE" if raw else "zlib"
    try:
        while len(out) <= size:  # one byte more than allowed reveals an oversized stream
            chunk = d.decompress(src, min(1 << 20, size + 1 - len(out)))
            if not chunk:
                break
            out += chunk
            src = d.unconsumed_tail
    except (zlib.error, _inflater.error):
        raise FormatError(f"{what} is not valid {kind} data") from None
    if len(out) > size or (exact and len(out) != size):
        raise FormatError(f"{what} decompresses to the wrong size (limit {size} bytes)")
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise FormatError(f"{what} is not a single complete {kind} stream")
    return out


def check_preamble(data: bytes, size: int) -> int:
    """Check magic, version and that the file is ``size`` bytes long, as its first 22 bytes say;
    return the expected size. ``data`` may be just those bytes (``read`` checks before reading on).
    """
    if len(data) < PRE.size and MAGIC.startswith(data[:8]):
        raise FormatError(f"file is truncated: {len(data)} bytes is shorter than the {PRE.size}-byte preamble")
    if data[:8] != MAGIC:
        hint = next((f"; it looks like {kind}" for sig, kind in _OTHER_FORMATS if data.startswith(sig)), "")
        raise FormatError(f"not a fisherpack file (bad magic){hint}")
    _, version, hlen, plen = PRE.unpack_from(data)
    if version not in READ_VERSIONS:
        newer = "; upgrade fisherpack to read it" if version > VERSION else ""
        reads = f"this fisherpack reads versions 1 to {VERSION}"
        raise FormatError(f"unsupported format version {version} ({reads}){newer}")
    expected = PRE.size + hlen + plen + 4
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise FormatError(f"file is {what}: expected {expected} bytes, got {size}")
    return expected


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a .fpk file, read no further than its preamble says; FisherpackError if unreadable.

    A regular file is read only if its size matches the preamble, so a huge file of another kind or
    a damaged one fails fast. A pipe or device is read in 1 MiB steps up to one byte past the size
    the preamble declares, so a file followed by more bytes (or an endless stream) is refused after
    that byte, never read to its end; memory follows the bytes actually sent.
    """
    try:
        with open(path, "rb") as fh:
            return read_from(fh, path)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            raise FisherpackError(f"cannot read {path}: permission denied") from None
        raise FisherpackError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_from(fh: Any, path: str | os.PathLike) -> bytes:
    """:func:`read_bytes` from a handle already open (a pipe can be opened only once); OSError as
    the handle raises it."""
    try:
        data = fh.read(PRE.size)  # a buffered read waits for all 22 bytes or the end of a pipe
        if data[:8] != MAGIC or len(data) < PRE.size:
            return data  # split() says what is wrong
        st = os.fstat(fh.fileno())
        if stat.S_ISREG(st.st_mode):
            check_preamble(data, st.st_size)
            fh.seek(0)  # one read of the known size: read() to the end and a concatenation copied it twice
            return fh.read(st.st_size)
        _, _, hlen, plen = PRE.unpack_from(data)
        want, out = PRE.size + hlen + plen + 4, bytearray(data)
        if want > MAX_STREAM:  # an endless stream could otherwise claim 2**64 bytes and be read on
            raise FormatError(
                f"{path} declares {want} bytes, more than {MAX_STREAM} read from a pipe; save it to a file"
            )
        while len(out) <= want:
            chunk = fh.read(min(1 << 20, want + 1 - len(out)))
            if not chunk:
                break
            out += chunk
        check_preamble(bytes(out[: PRE.size]), len(out))  # says "truncated" or "longer than its header"
        return bytes(out)
    except MemoryError:
        raise FormatError(f"{path} declares more bytes than this machine can hold in memory") from None


def split(data: bytes) -> tuple[int, bytearray, memoryview]:
    """Check preamble, sizes and CRC; return (header length, inflated header bytes, payload view)."""
    data = data if isinstance(data, bytes) else bytes(data)
    expected = check_preamble(data, len(data))
    if zlib.crc32(memoryview(data)[:-4]) != struct.unpack_from("<I", data, expected - 4)[0]:
        raise FormatError("checksum mismatch: the file is corrupt")
    _, version, hlen, _ = PRE.unpack_from(data)
    header = inflate_header(memoryview(data)[PRE.size : PRE.size + hlen], version)
    return hlen, header, memoryview(data)[PRE.size + hlen : expected - 4]


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector. A parsed header and what is decoded from it hold no cycles,
    but each collection while they are built rescans every object made so far: with tens of
    thousands of entries that doubled the time to parse and to decode."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _no_constant(name: str) -> None:
    raise FormatError(f"bad header: JSON does not allow {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"bad header: number {text[:20]} is out of the float64 range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # parsers disagree on which copy wins, so a file must not have two
        seen: set[str] = set()  # a set, not a rescan of earlier keys: linear in the object's size
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FormatError(f"bad header: key {key!r} appears twice in one JSON object")
    return obj


def parse(header: bytes | bytearray) -> Any:
    """The header's JSON: strict UTF-8, no NaN/Infinity or out-of-range numbers, no duplicate keys,
    at most MAX_SEPARATORS separators (counted before parsing, inside strings too).

    A bytearray is emptied once decoded to text, so that at most two copies of a large header
    (the text and what the parser builds from it) are alive at a time.
    """
    separators = sum(header.count(c) for c in b"[{,:")
    if separators > MAX_SEPARATORS:
        raise FormatError(f"header has {separators} JSON separators, more than the limit of {MAX_SEPARATORS}")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("header is not valid UTF-8 JSON") from None
    if isinstance(header, bytearray):
        header.clear()
    try:
        with no_cycle_collection():
            doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise FormatError("header is not valid UTF-8 JSON") from None
    if _SURROGATE_ESCAPE.search(text):  # the only way a lone surrogate gets in: text is valid UTF-8
        _no_surrogates(doc)
    return doc


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_surrogates(doc: Any) -> None:
    """FormatError if a string holds a lone UTF-16 surrogate (a JSON escape like \\ud800 alone): it is
    not text, so printing or re-encoding it would fail. A pair (an escaped emoji) is fine."""
    try:
        json.dumps(doc, ensure_ascii=False, check_circular=False).encode("utf-8")  # C speed, linear
    except RecursionError:
        raise FormatError("header is not valid UTF-8 JSON") from None
    except UnicodeEncodeError:
        raise FormatError("bad header: a string holds a lone UTF-16 surrogate escape (like \\ud800)") from None
