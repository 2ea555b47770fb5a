"""Atomic file writes: a reader never sees a half-written output file."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FisherpackError

__all__ = ["atomic_write_bytes", "atomic_writer", "check_writable"]


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise FisherpackError(f"cannot write {path}: {exc.strerror or exc}; choose a writable output path") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. ``path`` is a directory
            raise FisherpackError(f"cannot write {path}: {exc.strerror or exc}; choose another output path") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before long work, if ``path`` cannot be created or replaced.

    Also removes the temporary files that writes of ``path`` killed before their rename left
    beside it (``.NAME.*.tmp``): a run killed with SIGKILL leaves no litter once started again.
    """
    path = Path(path)
    if path.is_dir():
        raise FisherpackError(f"cannot write {path}: it is a directory; give a file name")
    directory = path.parent if str(path.parent) else Path(".")
    if directory.exists() and not directory.is_dir():
        raise FisherpackError(f"cannot write {path}: {directory} is a file, not a folder")
    if not directory.is_dir():
        raise FisherpackError(f"cannot write {path}: folder {directory} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as exc:
        raise FisherpackError(f"cannot write {path}: {exc.strerror or exc}; choose a writable output path") from None
    os.close(fd)
    os.unlink(tmp)
    for stale in directory.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
