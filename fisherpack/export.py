"""Run a decoded model where fisherpack is not installed: a safetensors state dict, an ONNX graph.

Both take the *decoded* model: the pruned, quantized weights as dense float32 (zeros included),
every other tensor as stored. They trade the .fpk file's small size for portability.

- :func:`safetensors_bytes`: every state_dict name with its tensor, bit for bit; tied weights are
  written once per name (safetensors has no aliases), the file's meta goes to the safetensors
  metadata as JSON under ``"fisherpack"``. Needs the ``safetensors`` package (extra ``export``).
- :func:`onnx_bytes`: ``torch.onnx.export`` (the torch.export-based exporter) of the model in eval
  mode, traced on an example input, with the batch dimension (dim 0 of every input and output)
  dynamic. Needs ``onnx`` and ``onnxscript`` (extra ``export``).

Both return bytes; writing them is the caller's business.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .errors import ConfigError, FisherpackError, FormatError
from .fpk.tensors import Alias, Compressed

__all__ = ["safetensors_bytes", "onnx_bytes"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"this export needs the {module!r} package: pip install 'fisherpack[export]'") from None


def safetensors_bytes(compressed: Compressed, max_elements: int | None = None) -> bytes:
    """The decoded state dict of ``compressed`` as a safetensors file.

    Each alias is written as a full copy, so a tiny file that ties one large tensor under many names
    could ask for gigabytes: with ``max_elements`` (the reader's cap for the file, header.py) the
    entries written, copies included, are counted first and FormatError is raised above the cap.
    """
    _need("safetensors")
    from safetensors.numpy import save as save_numpy
    from safetensors.torch import save as save_torch

    if max_elements is not None:
        total = sum(math.prod(t.shape) for t in compressed.tensors.values() if not isinstance(t, Alias))
        total += sum(math.prod(compressed.tensors[t.target].shape) for t in compressed.tensors.values()
                     if isinstance(t, Alias))  # fmt: skip
        if total > max_elements:
            raise FormatError(
                f"the safetensors file would hold {total} entries (aliases written out as copies), more than "
                f"{max_elements}; pass a larger max_elements (--max-elements) if you trust this file"
            )
    seen: set[int] = set()
    tensors = {}
    for name, t in compressed.state_dict().items():
        tensors[name] = t.contiguous() if id(t) not in seen else t.clone()  # aliases: a copy per name
        seen.add(id(t))
    metadata = {"format": "pt", "fisherpack": json.dumps(compressed.meta, sort_keys=True)}
    if any(t.dtype == torch.bfloat16 for t in tensors.values()):  # numpy has no bfloat16
        return save_torch(tensors, metadata=metadata)
    # The same bytes through numpy, at a quarter of the per-tensor cost of the torch path.
    return save_numpy({name: t.numpy() for name, t in tensors.items()}, metadata=metadata)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and the ONNX exporter log, warn and print graphs about things a user cannot act
    on (and some of it even on success); the library never prints."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        sink = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _reason(exc: BaseException) -> str:
    """The first line of the innermost cause, without terminal colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def onnx_bytes(model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]) -> bytes:
    """The ONNX model of ``model`` traced on ``example`` (one input tensor or a tuple of them).

    A batch of 1 is doubled before tracing (torch.export specialises sizes 0 and 1, which would
    fix the batch dimension). FisherpackError with the exporter's first line if export fails.
    """
    _need("onnx")
    _need("onnxscript")
    inputs = example if isinstance(example, tuple) else (example,)
    if not inputs or not all(isinstance(x, torch.Tensor) and x.ndim >= 1 for x in inputs):
        raise ConfigError("the ONNX example must be a tensor or a tuple of tensors with a batch dimension")
    inputs = tuple(torch.cat([x, x]) if len(x) == 1 else x for x in inputs)
    names = ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    batch = torch.export.Dim.AUTO
    model.eval()
    try:
        with _quiet():
            program = torch.onnx.export(
                model,
                inputs,
                dynamo=True,
                verbose=False,
                input_names=names,
                output_names=["output"],
                dynamic_shapes=tuple({0: batch} for _ in inputs),
            )
            return program.model_proto.SerializeToString()
    except FisherpackError:
        raise
    except Exception as exc:
        raise FisherpackError(f"torch.onnx.export failed for this model: {_reason(exc)}") from None
