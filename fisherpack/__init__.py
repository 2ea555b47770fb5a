"""fisherpack: prune and quantize trained networks by Fisher information into small files.

The API in four calls::

    fisher = fisherpack.fisher.from_adam(optimizer, model)           # importance, no extra pass
    packed = fisherpack.compress(model, fisher, fisherpack.CompressConfig(rate=0.95, bits=5))
    fisherpack.save(packed, "model.fpk")                             # bit-packed, pickle-free
    fisherpack.load_into(model, "model.fpk")                         # decoded weights, bit-exact

Any nn.Module works (see compress.py); ``fisherpack.runtime`` runs pruned layers sparsely where
that is measured faster, ``fisherpack.export`` writes safetensors and ONNX.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os

from torch import nn

from . import data, dist, export, fisher, models, prune, quant, runtime
from .compress import compress, decompress
from .compress import load_into as _load_into
from .config import CompressConfig, PipelineConfig
from .errors import ConfigError, DataError, DistributedError, FisherpackError, FormatError, RanksDisagreeError
from .format import load as read
from .format import open_file, save
from .tensors import Compressed

__all__ = [
    "__version__",
    "compress",
    "decompress",
    "save",
    "read",
    "load",
    "load_into",
    "open_file",
    "Compressed",
    "CompressConfig",
    "PipelineConfig",
    "FisherpackError",
    "FormatError",
    "DataError",
    "ConfigError",
    "DistributedError",
    "RanksDisagreeError",
    "data",
    "dist",
    "fisher",
    "models",
    "prune",
    "quant",
    "runtime",
    "export",
]


def load(path: str | os.PathLike, max_elements: int | None = None) -> dict:
    """The decoded state dict of a .fpk file (quantized weights bit-exact, the rest as stored).

    ``max_elements`` lifts the reader's default cap on declared entries for a trusted file (see
    fisherpack.format.decode)."""
    return read(path, max_elements=max_elements).state_dict()


def load_into(model: nn.Module, source: Compressed | str | os.PathLike) -> nn.Module:
    """Load a .fpk file (or a Compressed) into ``model`` in place; ConfigError names the first
    tensor that does not match."""
    return _load_into(model, source)  # a file is streamed, tensor by tensor
