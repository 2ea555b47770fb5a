"""What a sweep measures: a model factory, its data splits, its default settings, a loss and a metric.

A registry model is one subject like any other: ``models.build(name)``, MNIST with ``val_size``
training images held out (a fixed permutation, the same for every seed), the settings of
``pipeline.default_config(name)``, cross-entropy and the error rate (:func:`registry`). A user's
model (``package.module:factory``) brings its own splits, and optionally a checkpoint, a loss and
a metric; the command line makes its Subject from those (cli/sweepparts.py) and the sweep runs
both the same way.

Identity. A point's key names its model and the settings hash (sweepplan.py); ``tags`` adds what else
decides its result when it is not the registry's default: a fingerprint of the data, of the
checkpoint, the loss and the metric. A registry model on its own MNIST has no tags, so its keys are
those of every sweep before subjects existed. The base models cached in the work folder are named
by :meth:`Subject.cache_id`, which covers the data's fingerprint even without tags: another factory,
data or checkpoint never reuses another's cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import losses, models, pipeline
from ..checkpoint import fingerprint
from ..config import PipelineConfig
from ..data import Dataset, split_validation
from ..losses import Loss, Metric

__all__ = ["Subject", "Pair", "mnist_splits", "registry", "data_fingerprint", "slug"]

Pair = tuple[torch.Tensor, torch.Tensor]  # (x, y), samples along dim 0


@dataclass(frozen=True)
class Subject:
    """One model to sweep, and everything its points are measured with.

    ``defaults`` trains the base model (``epochs``, ``lr``, ``batch_size``; ``epochs=0`` when
    ``build`` returns trained weights, e.g. from a checkpoint) and is the pipeline points' starting
    config. ``val`` picks and reports; ``test`` (optional) is reported beside it. ``loss`` (a
    mini-batch mean, None for cross-entropy) trains, fine-tunes and feeds a data Fisher;
    ``metric`` (lower is better, see losses.py) is what the records call ``*_error``.
    """

    name: str  # a registry name or "package.module:factory": the "model" of every key
    build: Callable[[], nn.Module]  # a fresh model; the caller seeds torch first
    defaults: PipelineConfig
    train: Pair
    val: Pair
    test: Pair | None = None
    loss: Loss | None = None
    metric: Metric = losses.error
    metric_name: str = "error"
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def trained_here(self) -> bool:
        """True when the base model is trained by the sweep, so Adam's state is there to read a
        Fisher from; a model that arrives trained (``defaults.epochs == 0``) has none."""
        return self.defaults.epochs > 0

    @functools.cached_property
    def cache_id(self) -> str:
        """A short hash of the factory spec, the tags and the data's fingerprint (see module doc)."""
        parts = {"model": self.name, "tags": self.tags, "data": data_fingerprint(self.train, self.val, self.test)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def data_fingerprint(*pairs: Pair | None) -> str:
    """SHA-256 of the splits' tensors (dtypes, shapes and bytes), an absent split marked as such."""
    tensors = [t for pair in pairs for t in (pair if pair is not None else (torch.zeros(0),))]
    return fingerprint(*tensors)


def mnist_splits(dataset: Dataset, val_size: int) -> dict[str, Pair]:
    """The registry's splits: the last ``val_size`` of a fixed permutation of the training images
    held out for validation (seed 0), the test images as they are."""
    x, y, x_test, y_test = dataset.tensors()
    x_fit, y_fit, x_val, y_val = split_validation(x, y, val_size, seed=0)
    return {"train": (x_fit, y_fit), "val": (x_val, y_val), "test": (x_test, y_test)}


def registry(name: str, splits: dict[str, Pair]) -> Subject:
    """The registry model ``name`` on ``splits``, with its ``reproduce`` defaults."""
    return Subject(name, functools.partial(models.build, name), pipeline.default_config(name), **splits)


def slug(name: str) -> str:
    """``name`` fit for a file name: ``examples.rowgru:tiny`` -> ``examples.rowgru-tiny``."""
    return re.sub(r"[^\w.-]", "-", name)
