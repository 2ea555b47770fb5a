"""fisherpack: prune and quantize trained networks by Fisher information into small files.

The API in four calls::

    fisher = fisherpack.fisher.from_adam(optimizer, model)           # importance, no extra pass
    packed = fisherpack.compress(model, fisher, fisherpack.CompressConfig(rate=0.95, bits=5))
    fisherpack.save(packed, "model.fpk")                             # bit-packed, pickle-free
    fisherpack.load_into(model, "model.fpk")                         # decoded weights, bit-exact

``fisherpack.load(path)`` returns the file's :class:`Compressed` (``.state_dict()`` decodes it,
``.meta`` holds what made it). Any nn.Module works (see compression.py); ``fisherpack.pipeline``
runs the whole iterative schedule, ``fisherpack.runtime`` runs pruned layers sparsely where that is
measured faster, ``fisherpack.export`` writes safetensors and ONNX.

Layers, each importing only from those below it: ``cli``; ``bench``; ``pipeline`` and its
helpers; the method; ``config``; ``fpk`` (the file format) and ``errors`` at the bottom. The README
("How the package is laid out") lists the modules of each; tests/test_layout.py checks every import.
"""

from . import data, dist, export, fisher, models, pipeline, prune, quant, runtime
from .compression import compress
from .config import CompressConfig, PipelineConfig
from .errors import ConfigError, DataError, DistributedError, FisherpackError, FormatError, RanksDisagreeError
from .fpk.container import load, open_file, save
from .fpk.tensors import Compressed
from .loading import load_into
from .version import __version__

__all__ = [
    "__version__",
    "compress",
    "save",
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
    "export",
    "fisher",
    "models",
    "pipeline",
    "prune",
    "quant",
    "runtime",
]
