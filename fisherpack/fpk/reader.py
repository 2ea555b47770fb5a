"""Lazy reading of .fpk files, like safetensors' ``safe_open``: names first, tensors on demand.

:func:`open_file` checks what a full read checks before anything is decoded (preamble, the file's
size, the CRC-32 over the whole file, read in 1 MiB steps, and the header: docs/FORMAT.md sections
2, 3 and 9); then :meth:`FpkReader.entry` / :meth:`FpkReader.tensor` decode one tensor by reading
just its streams. Errors are the same one-line FormatErrors as :func:`fisherpack.fpk.container.decode`'s,
from the same code. Memory: the header and one tensor's streams and output at a time.

The CRC is checked when the file is opened; a file changed on disk while open is not noticed.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Iterator

import torch

from ..errors import FisherpackError, FormatError
from .header import PRE, check_preamble, inflate_header, no_cycle_collection, read_from, split
from .schema import validate
from .tensors import Alias, QuantTensor, RawTensor

__all__ = ["FpkReader", "open_file", "describe", "stream_slices"]

_STEP = 1 << 20


class FpkReader:
    """An open, checked .fpk file. Use as a context manager, or call :meth:`close`."""

    def __init__(self, fh, size: int, max_elements: int | None) -> None:
        self._fh = fh
        fh.seek(0)
        first = fh.read(PRE.size)  # may be short: check_preamble says so as decode() does
        expected = check_preamble(first, size)
        _, self.version, hlen, plen = PRE.unpack_from(first)
        crc = 0
        for pos in range(0, expected - 4, _STEP):  # the whole file, without holding it
            crc = zlib.crc32(self._read_at(pos, min(_STEP, expected - 4 - pos)), crc)
        if crc != struct.unpack("<I", self._read_at(expected - 4, 4))[0]:
            raise FormatError("checksum mismatch: the file is corrupt")
        header = inflate_header(self._read_at(PRE.size, hlen), self.version)
        self.meta, entries = validate(header, plen, size, max_elements, self.version)
        self._entries, offset = {}, PRE.size + hlen
        for e in entries:
            e["_offset"] = offset  # streams lie back to back, in header order
            offset += sum(s["length"] for s in e["_streams"])
            self._entries[e["name"]] = e

    def _read_at(self, pos: int, n: int) -> bytes:
        self._fh.seek(pos)
        data = self._fh.read(n)
        if len(data) != n:  # the file shrank after it was checked
            raise FormatError(f"file is truncated: expected {n} bytes at offset {pos}, got {len(data)}")
        return data

    def names(self) -> list[str]:
        """Tensor names in file order (state_dict order)."""
        return list(self._entries)

    def alias_target(self, name: str) -> str | None:
        """The name ``name`` is an alias of, or None."""
        e = self._entries[name]
        return e["target"] if e["kind"] == "alias" else None

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of ``name`` from the header (an alias has its target's), without decoding."""
        e = self._entries[name]
        return tuple(self._entries[e["target"]]["shape"] if e["kind"] == "alias" else e["shape"])

    def entry(self, name: str) -> QuantTensor | RawTensor | Alias:
        """Decode one entry: its streams are read from the file now."""
        from .decoding import decode_entry  # decoding imports this module for stream_slices

        e = self._entries[name]
        data = memoryview(self._read_at(e["_offset"], sum(s["length"] for s in e["_streams"])))
        _, blobs = next(stream_slices([e], data))  # its streams, back to back from the offset read
        return decode_entry(e, blobs, self.version)

    def tensor(self, name: str) -> torch.Tensor:
        """The decoded tensor ``name`` (an alias decodes its target)."""
        e = self._entries[name]
        entry = self.entry(e["target"] if e["kind"] == "alias" else name)
        return entry.dequantize() if isinstance(entry, QuantTensor) else entry.tensor

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> FpkReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_file(path: str | os.PathLike, max_elements: int | None = None) -> FpkReader:
    """Open and check a .fpk file for lazy reading. FisherpackError if it cannot be read,
    FormatError (one line) if it is malformed. ``max_elements`` as in :func:`fisherpack.fpk.container.decode`.
    A pipe or other non-regular file is read into memory first (its size is known only then)."""
    try:
        fh = open(path, "rb")
        st = os.fstat(fh.fileno())
    except OSError as exc:
        raise FisherpackError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(st.st_mode):  # read from this handle: a pipe cannot be opened twice
            data = read_from(fh, path)
            fh.close()
            fh, size = io.BytesIO(data), len(data)
        else:
            size = st.st_size
        return FpkReader(fh, size, max_elements)
    except OSError as exc:
        fh.close()
        raise FisherpackError(f"cannot read {path}: {exc.strerror or exc}") from None
    except BaseException:
        fh.close()
        raise


def stream_slices(entries: list[dict], payload: memoryview) -> Iterator[tuple[dict, list[memoryview]]]:
    """Each validated entry with its streams' slices of ``payload``, which holds the streams of
    ``entries`` back to back: offsets are cumulative lengths, so streams never overlap."""
    offset = 0
    for e in entries:
        blobs = []
        for s in e["_streams"]:
            blobs.append(payload[offset : offset + s["length"]])
            offset += s["length"]
        yield e, blobs


def describe(data: bytes, max_elements: int | None = None, decode_streams: bool = False) -> dict:
    """Layout of a .fpk file: preamble sizes, meta, and for each tensor its kind, shape, numel, dtype
    or kept/groups, alias target, and every stream's role, encoding, bytes. The tensors are not
    decoded unless ``decode_streams``: then every stream is, with decode's checks and errors (the
    header is parsed and checked once either way).
    """
    hlen, header, payload = split(data)
    version = PRE.unpack_from(data)[1]
    with no_cycle_collection():
        meta, entries = validate(header, len(payload), len(data), max_elements, version)
        if decode_streams:
            from .container import decode_entry  # container imports this module

            for e, blobs in stream_slices(entries, payload):
                decode_entry(e, blobs, version)
        return _layout(data, hlen, len(payload), meta, entries)


def _layout(data: bytes, hlen: int, plen: int, meta: dict, entries: list[dict]) -> dict:
    shapes = {e["name"]: e.get("shape") for e in entries}
    out = []
    for e in entries:
        d = {k: v for k, v in e.items() if k in ("name", "kind", "shape", "dtype", "kept", "groups", "target")}
        roles = ["data"] if e["kind"] == "raw" else ["mask", *(["ids"] if "ids" in e else [])]
        roles += [f"codes[{i}]" for i in range(len(e.get("codes", [])))]
        d["streams"] = [{"role": r, **s} for r, s in zip(roles, e["_streams"])]
        d["bytes"] = sum(s["length"] for s in e["_streams"])
        if e["kind"] == "alias":
            d["shape"] = shapes[e["target"]]
        else:
            d["numel"] = e["_numel"]
        out.append(d)
    return {"version": PRE.unpack_from(data)[1], "file_bytes": len(data), "header_bytes": hlen,
            "payload_bytes": plen, "meta": meta, "tensors": out}  # fmt: skip
