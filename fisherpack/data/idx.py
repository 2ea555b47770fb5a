"""Reading MNIST-format idx files, safely: sizes are checked before anything is allocated.

An idx file is bytes 0x00 0x00, a type byte (0x08 = unsigned byte, the only one accepted), a byte
with the number of dimensions, that many big-endian uint32 dimensions, then the data in C order.
Plain or gzip (detected by content, not by name).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError

__all__ = ["FILES", "read_idx", "find_idx_files", "names", "read_upto", "gz_reader", "MAX_FILE", "GZ_MAGIC"]

# Role -> canonical (uncompressed) file name; the cache holds exactly these names.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MAX_FILE = 1 << 30  # no MNIST-like file comes near 1 GiB: never allocate beyond it
MAX_NDIM = 8  # MNIST's labels are 1-d, its images 3-d; numpy cannot even hold more than 64
GZ_MAGIC = b"\x1f\x8b"
_HINT = "pass --data-dir pointing at the idx files, or omit it to download MNIST"


def names(role: str) -> tuple[str, ...]:
    """Accepted names: ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte``, plain or .gz."""
    dash = FILES[role]
    dot = dash.replace("-idx", ".idx")
    return dash, dash + ".gz", dot, dot + ".gz"


def read_upto(read: Callable[[int], bytes], n: int) -> bytes:
    """Call ``read`` in chunks of at most 1 MiB until ``n`` bytes or EOF: memory follows real data."""
    chunks, got = [], 0
    while got < n and (chunk := read(min(1 << 20, n - got))):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class gz_reader:  # noqa: N801  (used like the function it was)
    """``read(n)`` over the decompressed bytes of one gzip member, at most ``n`` bytes per call;
    :meth:`ended_cleanly` says whether the member ended and nothing (no second member, no garbage)
    follows it, as a plain idx file must end where its header says."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.dec = raw, zlib.decompressobj(16 + zlib.MAX_WBITS)

    def __call__(self, n: int) -> bytes:
        out, have, dec = [], 0, self.dec
        while have < n and not dec.eof and (src := dec.unconsumed_tail or self.raw.read(1 << 16)):
            out.append(dec.decompress(src, n - have))
            have += len(out[-1])
        return b"".join(out)

    def ended_cleanly(self) -> bool:
        self(1)  # reach the end of the member if only its trailer is left
        return self.dec.eof and not self.dec.unused_data and not self.dec.unconsumed_tail and not self.raw.read(1)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte idx file (plain, or one gzip member, detected by content) as uint8.

    Layout: bytes 0x00 0x00, type byte (0x08 = uint8, the only one accepted), ndim byte, ndim
    big-endian uint32 dims, then prod(dims) bytes in C order. Sizes are checked before data is read;
    gzip input is decompressed in chunks up to the declared size + 1 byte, so a corrupt or hostile
    header cannot cause an allocation the file does not justify.
    """
    path = Path(path)
    bad = f"{path} is truncated/corrupt"
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            gz = raw.read(2) == GZ_MAGIC
            raw.seek(0)
            read = gz_reader(raw) if gz else raw.read
            head = read_upto(read, 4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise DataError(f"{path} is not an idx file (magic {head.hex() or 'missing'}); {_HINT}")
            if head[2] != 0x08:
                raise DataError(f"{path} has idx type 0x{head[2]:02x}; only unsigned-byte (0x08) is supported")
            if head[3] > MAX_NDIM:
                raise DataError(f"{path} declares {head[3]} dimensions, more than {MAX_NDIM}; MNIST's have 1 or 3")
            dims_raw = read_upto(read, 4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise DataError(f"{bad}: its idx header is cut short")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            expected = int(np.prod(dims, dtype=object))
            if gz:  # deflate expands at most ~1032:1, so a header claiming more is lying
                if expected > min(MAX_FILE, 1100 * size):
                    raise DataError(f"{bad}: header declares {expected} bytes, more than the file can hold")
                data = read_upto(read, expected + 1)
                got = len(data)
                if got == expected and not read.ended_cleanly():
                    raise DataError(f"{bad}: bytes follow the gzip data (a second member or garbage)")
            else:  # the file size says it all: read nothing unless it matches
                got = size - 4 - len(dims_raw)
                data = raw.read(expected) if got == expected else b""
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {_HINT}") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an idx file; {_HINT}") from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"{bad}: cannot read it ({exc})") from None
    if got != expected:
        shown = f"more than {expected}" if gz and got > expected else str(got)
        raise DataError(f"{bad}: expected {expected} bytes, got {shown}")
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(dims)  # bytearray: a writable array


def find_idx_files(folder: str | Path, roles: tuple[str, ...] = tuple(FILES)) -> dict[str, Path]:
    """Locate the four MNIST-format files in ``folder``; keys are the roles of :data:`FILES`.

    Both ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte`` namings are accepted, plain
    or ``.gz`` (the first in that order wins); AppleDouble ``._*`` files are never matched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"data folder {folder} {what}; {_HINT}")
    found = {}
    for role in roles:
        hits = [folder / n for n in names(role) if (folder / n).is_file()]
        if not hits:
            what = role.replace("train_", "training ").replace("_", " ")
            alts = " or ".join(f"{n}[.gz]" for n in names(role)[::2])
            raise DataError(f"no MNIST {what} in {folder}: expected {alts}; {_HINT}")
        found[role] = hits[0]
    return found
