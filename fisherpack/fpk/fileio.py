"""Atomic file writes that never clobber: a reader never sees a half-written output file, and an
output path that names a device, a FIFO, a folder, the input or (without ``overwrite``) a symlink or
a read-only file is refused before any work.

A write goes to ``.NAME.XXXXXXXX.tmp`` beside the output (8 random characters; a name too long to
fit is replaced by its SHA-256), held under an exclusive ``flock`` until it is renamed over the
output. Start-up clean-up removes only the temp files of the same output whose lock it can take:
their writer is dead (a killed run), while a live concurrent run's file stays untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FisherpackError

__all__ = ["atomic_write_bytes", "atomic_writer", "check_writable", "shown"]

_NAME_MAX = 200  # bytes of the output's name kept in a temp name (NAME_MAX is 255 on common file systems)


def shown(path: str | os.PathLike) -> str:
    """``path`` for a terminal: control characters, escapes and undecodable bytes as Python escapes."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)[1:-1]


def _stem(path: Path) -> str:
    name = path.name
    if len(os.fsencode(name)) <= _NAME_MAX:
        return name
    return "h" + hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _refuse_special(path: Path) -> None:
    """FisherpackError if ``path`` exists and is not a regular file (or a symlink, handled by the caller)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise FisherpackError(f"cannot write {shown(path)}: it is a directory; give a file name")
    kinds = [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket")]  # fmt: skip
    for test, what in kinds:
        if test(st.st_mode):
            raise FisherpackError(f"cannot write {shown(path)}: it is {what}, not a regular file; choose another path")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a locked temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. A device, FIFO,
    socket or folder at ``path`` is refused: the rename would replace the node itself.
    """
    path = Path(path)
    _refuse_special(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_stem(path)}.", suffix=".tmp", dir=_folder(path))
    except OSError as exc:
        raise FisherpackError(
            f"cannot write {shown(path)}: {exc.strerror or exc}; choose a writable output path"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # tells clean-up in another process that we are alive
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            try:
                os.replace(tmp, path)
            except OSError as exc:  # e.g. ``path`` became a directory
                raise FisherpackError(
                    f"cannot write {shown(path)}: {exc.strerror or exc}; choose another output path"
                ) from None
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


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_writable(
    path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """Fail early, before long work, if ``path`` cannot or must not be created or replaced.

    Refused always: an empty name, a folder, a device, a FIFO or socket, any of ``inputs`` (also
    through a link); without ``overwrite``: a symlink (the write would replace the link, not its
    target) and a read-only file. Then removes the dead temp files of earlier writes of ``path``
    (see the module docstring).
    """
    if not os.fspath(path):
        raise FisherpackError("the output name is empty; give a file name")
    path = Path(path)
    shown_path = shown(path)
    for source in inputs:
        if _same_file(path, source):
            raise FisherpackError(f"cannot write {shown_path}: it is the input file; choose another output path")
    _refuse_special(path)
    if path.is_symlink() and not overwrite:
        raise FisherpackError(f"cannot write {shown_path}: it is a symlink; pass --force to replace the link itself")
    if path.is_file() and not path.is_symlink() and not overwrite and not path.stat().st_mode & 0o222:
        raise FisherpackError(f"cannot write {shown_path}: the file is read-only; pass --force to replace it")
    directory = _folder(path)
    if directory.exists() and not directory.is_dir():
        raise FisherpackError(f"cannot write {shown_path}: {shown(directory)} is a file, not a folder")
    if not directory.is_dir():
        raise FisherpackError(f"cannot write {shown_path}: folder {shown(directory)} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_stem(path)}.", suffix=".probe", dir=directory)
    except OSError as exc:
        raise FisherpackError(
            f"cannot write {shown_path}: {exc.strerror or exc}; choose a writable output path"
        ) from None
    os.close(fd)
    os.unlink(tmp)
    _remove_dead_temps(path)


def _remove_dead_temps(path: Path) -> None:
    """Remove ``.NAME.XXXXXXXX.tmp`` files beside ``path`` whose writer's lock is gone."""
    own = re.compile(rf"\.{re.escape(_stem(path))}\.[a-z0-9_]{{8}}\.tmp")
    with contextlib.suppress(OSError), os.scandir(_folder(path)) as entries:
        for entry in entries:
            if not own.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live writer holds it
                    os.unlink(entry.path)
                finally:
                    os.close(fd)
