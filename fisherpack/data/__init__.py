"""MNIST-format data: idx reading, fetching with MD5 checks, tensors, batches and a synthetic set.

Conventions: images are (N, 28, 28) uint8 with 0 = background; labels are (N,) integers in 0..9.
Any idx data set of that shape (MNIST, Fashion-MNIST, ...) loads unchanged through ``data_dir``.
Model inputs are float32 (N, 1, 28, 28): pixels scaled to [0, 1], then standardised with the MNIST
training-set mean 0.1307 and std 0.3081 (the usual constants, used for every data set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..fpk.fileio import atomic_write_bytes
from .fetch import MNIST_MD5, MNIST_MIRRORS, fetch_mnist
from .idx import FILES, find_idx_files, read_idx

__all__ = [
    "Dataset",
    "load",
    "load_test",
    "fetch_mnist",
    "read_idx",
    "find_idx_files",
    "synthetic",
    "to_tensor",
    "check_labels",
]
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


def _read_splits(folder: Path, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The idx arrays of ``splits`` ("train", "test") in ``folder``, each checked and non-empty."""
    files = find_idx_files(folder, tuple(f"{s}_{kind}" for s in splits for kind in ("images", "labels")))
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in splits:
        name = "training" if split == "train" else "test"
        where = f" ({files[split + '_images'].name}, {files[split + '_labels'].name} in {folder})"
        _check_split(arrays[split + "_images"], arrays[split + "_labels"], name, where)
        if not len(arrays[split + "_labels"]):
            raise DataError(f"{name} images{where} are empty (0 images); use a data set with at least one")
    return arrays


def load(data_dir: str | Path | None = None, cache_dir: str | Path | None = None, log: Log = None) -> Dataset:
    """Load the four idx files in ``data_dir``; with None, :func:`fetch_mnist` into ``cache_dir`` first.

    DataError for any defect of the files, including an empty split.
    """
    folder = Path(data_dir) if data_dir is not None else fetch_mnist(cache_dir, log=log)
    arrays = _read_splits(folder, ("train", "test"))
    if log:
        log(f"loaded {len(arrays['train_labels'])} training, {len(arrays['test_labels'])} test images")
    return Dataset(**arrays)


def load_test(data_dir: str | Path | None = None, cache_dir: str | Path | None = None, log: Log = None) -> tuple:
    """(x_test, y_test) tensors as :meth:`Dataset.tensors` makes them, reading only the two test files."""
    folder = Path(data_dir) if data_dir is not None else fetch_mnist(cache_dir, log=log)
    arrays = _read_splits(folder, ("test",))
    if log:
        log(f"loaded {len(arrays['test_labels'])} test images")
    return to_tensor(arrays["test_images"]), torch.from_numpy(np.array(arrays["test_labels"], np.int64))


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
