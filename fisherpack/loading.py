"""The inverse of compress: a Compressed or a .fpk file loaded into a model (streamed from a file,
one tensor at a time), the check that a state dict fits a model, and a file's figures (sizes
against fp32, kept weights, average code bits)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from . import structured
from .errors import ConfigError
from .fpk import meta as file_meta
from .fpk.container import stripped
from .fpk.reader import FpkReader, open_file
from .fpk.tensors import Alias, Compressed, QuantTensor

__all__ = ["load_into", "check_state_dict", "summary", "file_summary"]


def load_into(model: nn.Module, source: Compressed | str | os.PathLike, max_elements: int | None = None) -> nn.Module:
    """Load a Compressed, or stream a .fpk file, into ``model`` in place and return it: quantized
    weights bit-exact, every other tensor as stored; ConfigError names the first tensor that does
    not match. ``max_elements`` as in fpk.container.decode (files only).

    A file is streamed: names and shapes are checked against the model from the header before
    anything is decoded, then each tensor is decoded and copied into its parameter or buffer in
    turn, so memory holds one decoded tensor, not a second state dict. The file's CRC is checked
    first, so a stream that fails to decode half-way (a crafted file) leaves the earlier tensors
    loaded and raises FormatError.
    """
    if isinstance(source, Compressed):
        decoded = source.state_dict()
        _fit_if_shrunk(model, decoded, source.meta)
        check_state_dict(model, decoded, "the file")
        model.load_state_dict(decoded)
        return model
    with open_file(source, max_elements=max_elements) as reader:
        shapes = {n: torch.empty(reader.shape(n), device="meta") for n in reader.names()}  # no memory
        _fit_if_shrunk(model, shapes, reader.meta)
        check_state_dict(model, shapes, "the file")
        targets = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in reader.names():
                _copy_into(targets, reader, name)
    return model


def _fit_if_shrunk(model: nn.Module, shapes: dict[str, Any], meta: dict[str, Any]) -> None:
    """A file written after structured pruning holds smaller layers: give ``model`` their shapes
    (only then: for any other file a shape mismatch is the user's mistake, and is named). A
    full-size ``model`` must be the size the file says it was made from (``original``, the base of
    its ratio): ConfigError otherwise, before the model is touched."""
    if not file_meta.shrunk(meta):
        return
    state = model.state_dict()
    if "original" in meta and any(n in shapes and tuple(shapes[n].shape) != tuple(t.shape) for n, t in state.items()):
        claimed, size = meta["original"], structured.model_size(model)
        if claimed != size:
            raise ConfigError(f"the file says it was made from a model of {_size_text(claimed)}, this model has "
                              f"{_size_text(size)}; is it the right model?")  # fmt: skip
    structured.fit(model, shapes)


def _size_text(claimed: Any) -> str:
    if isinstance(claimed, dict) and type(claimed.get("params")) is int and type(claimed.get("fp32_bytes")) is int:
        return f"{claimed['params']:,} values ({claimed['fp32_bytes']:,} fp32 bytes)"
    return "an unreadable size"


def _copy_into(targets: dict[str, torch.Tensor], reader: FpkReader, name: str) -> None:
    """Decode ``name`` straight into its parameter or buffer; an alias copies its (earlier) target."""
    t, alias = targets[name], reader.alias_target(name)
    if alias is not None:
        if t.data_ptr() != targets[alias].data_ptr():  # tied in the file but not in this model
            t.data.copy_(targets[alias])
        return
    entry = reader.entry(name)
    if isinstance(entry, QuantTensor) and t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous():
        entry.dequantize_into(t.data.view(-1).numpy())
    else:
        t.data.copy_(entry.dequantize() if isinstance(entry, QuantTensor) else entry.tensor)


def check_state_dict(model: nn.Module, state: dict[str, Any], source: str = "the file") -> None:
    """ConfigError (one line) naming the first tensor, in the model's state_dict order, that
    ``state`` lacks or holds with another shape, else the first tensor the model does not have."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ConfigError(f"{source} has no tensor {name!r} that the model expects; is it the right model?")
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise ConfigError(f"{source} holds a {type(got).__name__} for {name!r}, not a tensor")
        if tuple(got.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"tensor {name!r} has shape {tuple(got.shape)} in {source} but "
                f"{tuple(tensor.shape)} in the model; is it the right model?"
            )
    extra = [n for n in state if n not in expected]
    if extra:
        raise ConfigError(f"{source} has a tensor {extra[0]!r} that the model does not; is it the right model?")


def file_summary(raw: bytes, compressed: Compressed) -> dict[str, Any]:
    """:func:`summary` of a file's bytes ``raw`` (decoded: ``compressed``), with ``stripped_bytes``:
    the size of the same file without its provenance (``export --strip``), a real file's size too."""
    return {**summary(compressed, len(raw)), "stripped_bytes": len(stripped(raw, checked=True))}


def summary(compressed: Compressed, file_bytes: int) -> dict[str, Any]:
    """Figures of a compressed model: sizes against fp32, kept weights, average code bits. After
    structured pruning the file's meta names the original model's size (``original``): params,
    fp32 bytes and the ratio are of that model, ``stored_params`` of the smaller one stored."""
    params = nonzero = fp32_elems = code_bits = kept = 0
    for entry in compressed.tensors.values():
        if isinstance(entry, Alias):
            continue
        if isinstance(entry, QuantTensor):
            params += entry.numel
            fp32_elems += entry.numel
            nonzero += int(np.count_nonzero(entry.values()))
            kept += entry.kept
            code_bits += int((entry.group_counts() * np.asarray(entry.bits)).sum())
        else:
            t = entry.tensor
            params += t.numel()
            fp32_elems += t.numel() if t.is_floating_point() else 0
            nonzero += int(torch.count_nonzero(t))
    fp32_bytes = 4 * fp32_elems
    stored = params
    original = compressed.meta.get("original")  # the model before structured pruning made it smaller
    if isinstance(original, dict) and all(type(original.get(k)) is int and original[k] >= stored
                                          for k in ("params", "fp32_bytes")):  # fmt: skip
        params, fp32_bytes = original["params"], original["fp32_bytes"]
    return {
        "params": params,
        "stored_params": stored,
        "nonzero_params": nonzero,
        "kept_fraction": nonzero / max(params, 1),
        "param_ratio": params / max(nonzero, 1),
        "avg_bits": code_bits / max(kept, 1),
        "file_bytes": file_bytes,
        "fp32_bytes": fp32_bytes,
        "ratio": fp32_bytes / max(file_bytes, 1),
    }
