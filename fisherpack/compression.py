"""The one verb: ``compress(model, fisher, config) -> Compressed``, and its inverse.

Works on any ``nn.Module``. Which tensors are compressed: by default every floating-point
parameter with 2 or more dimensions (the weights of Linear, ConvNd, Embedding, the packed
``in_proj_weight`` of MultiheadAttention, RNN/GRU/LSTM matrices, bare Parameters of custom
modules); 1-D tensors (biases, norm scales) are quantized with ``config.quantize_biases`` and
stored losslessly otherwise. ``config.include`` (fnmatch patterns on parameter names) replaces
that choice and ``config.exclude`` removes from it; a pattern that matches nothing is an error.
A frozen parameter (``requires_grad=False``) the Fisher estimate lacks is refused by name. Names
are those of ``model.named_parameters()``: a parameter shared by several modules (tied weights)
goes by its first name. Every other tensor (buffers such as BatchNorm statistics, including the
int64 ``num_batches_tracked``) is stored losslessly; a tensor shared by several names is stored
once and recorded as an alias of its first name.

Already-zero weights of a compressed tensor count as pruned, so a model pruned elsewhere (or by
:mod:`fisherpack.pipeline`) keeps its sparsity; ``config.rate`` prunes further to that rate with
``config.criterion`` (see prune.py), then the kept entries are quantized (see quant.py).
``config.overrides`` gives single tensors their own rate (each pruned on its own, the others
ranked together as ``config.scope`` says) and/or a fixed bit width.
"""

from __future__ import annotations

import fnmatch
import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from . import prune, quant, structured
from .config import CompressConfig
from .errors import ConfigError
from .fpk import meta as file_meta
from .fpk.container import DTYPES, stripped
from .fpk.reader import FpkReader, open_file
from .fpk.tensors import Alias, Compressed, QuantTensor, RawTensor
from .version import __version__

__all__ = [
    "COMPRESSIBLE_LAYERS",
    "compressible",
    "compress",
    "select_masks",
    "load_into",
    "check_state_dict",
    "summary",
    "file_summary",
]

COMPRESSIBLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def compressible(model: nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """Names of the parameters to prune and quantize, in ``named_parameters()`` order (see module
    docstring); a tied parameter is listed once, under its first name. ConfigError naming a
    pattern of ``include`` or ``exclude`` that matches no floating-point parameter (a typo would
    otherwise silently change what is compressed)."""
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    for pattern in (*include, *exclude):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            flag = "include" if pattern in include else "exclude"
            example = f"; names look like {names[0]!r}" if names else ""
            raise ConfigError(f"{flag} pattern {pattern!r} matches no parameter of the model{example}")
    if include:
        chosen = {n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in include)}
    else:
        params = dict(model.named_parameters())
        chosen = {n for n in names if params[n].ndim >= 2}
    return [n for n in names if n in chosen and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)]


def compress(
    model: nn.Module,
    fisher: dict[str, torch.Tensor] | None,
    config: CompressConfig | None = None,
    *,
    masks: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> Compressed:
    """Prune (to ``config.rate``) and quantize ``model``'s compressible weights.

    ``fisher`` is a dict of diagonal Fisher estimates keyed by parameter name (see fisher.py); it
    may be None only for the magnitude/random criteria with uniform quantization. ``config``
    defaults to ``CompressConfig()`` (quantize only, 5 bits on average). ``masks``
    (True = keep) replaces pruning when given.
    """
    config = config or CompressConfig()
    if not isinstance(config, CompressConfig):
        raise ConfigError(f"config must be a CompressConfig, got {type(config).__name__}")
    names = compressible(model, config.include, config.exclude)
    if not names:
        raise ConfigError("the model has no weights to compress (no floating-point parameter of 2 or more dimensions)")
    layer = config.layer_settings(names)
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().float() for n in names}
    for n, w in weights.items():
        if not -math.inf < (bounds := prune.value_range(w))[0] <= bounds[1] < math.inf:
            raise ConfigError(f"weight {n!r} has NaN or Inf values; fix the model before compressing")
    if fisher is None and config.needs_fisher(masks_given=masks is not None):
        by_criterion = config.replace(allocation="uniform").needs_fisher(masks_given=masks is not None)
        use = f"criterion {config.criterion!r}" if by_criterion else f"allocation {config.allocation!r}"
        raise ConfigError(f"{use} needs a Fisher estimate (see fisherpack.fisher); without one use criterion "
                          "magnitude or random and allocation uniform")  # fmt: skip
    frozen = [n for n in names if not params[n].requires_grad and isinstance(fisher, dict) and n not in fisher]
    if frozen:
        raise ConfigError(f"parameter {frozen[0]!r} is frozen (requires_grad=False), so the Fisher estimate has none; "
                          "exclude it from compression or estimate its Fisher with it trainable")  # fmt: skip
    if fisher is not None:
        _check_per_weight(fisher, weights, "the Fisher estimate", finite_nonnegative=True)
    if masks is not None:
        _check_per_weight(masks, weights, "masks")
    if masks is None:
        masks = select_masks(config, weights, fisher, layer)
    if config.quantize_biases:  # quantized like the weights, never pruned
        masks = dict(masks)
        for n in _vectors(model, config, names):
            weights[n] = params[n].detach().float()
            masks[n] = torch.ones_like(weights[n], dtype=torch.bool)
    quantized = quant.quantize(
        weights,
        masks,
        fisher,
        allocation=config.allocation,
        bits=config.bits,
        groups=config.groups,
        group_bits=config.group_bits,
        widths={n: int(s["bits"]) for n, s in layer.items() if "bits" in s},
    )
    header = {"fisherpack": __version__, "config": config.to_dict()}
    header.update(meta or {})
    return Compressed(_entries(model, quantized), header)


def select_masks(
    config: CompressConfig,
    weights: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor] | None,
    layer: dict[str, dict[str, float]] | None = None,
) -> dict[str, torch.Tensor]:
    """One-shot masks (True = keep) for ``weights``: already-zero entries count as pruned; tensors
    with a ``rate`` in ``layer`` (see CompressConfig.layer_settings) are pruned on their own to it,
    the others together to ``config.rate`` with ``config.scope``."""
    layer = layer or {}
    masks = {n: w != 0 for n, w in weights.items()}
    shared = [n for n in weights if "rate" not in layer.get(n, {})]
    jobs = [(shared, config.rate, config.scope)] + [([n], s["rate"], "layer") for n, s in layer.items() if "rate" in s]
    for group, rate, scope in jobs:
        if rate > 0 and group:
            masks.update(
                prune.select(
                    config.criterion,
                    {n: weights[n] for n in group},
                    fisher,
                    rate,
                    scope=scope,
                    current={n: masks[n] for n in group},
                    magnitude_share=config.magnitude_share,
                    seed=config.seed,
                )
            )
    return masks


def _entries(model: nn.Module, quantized: dict[str, QuantTensor]) -> dict[str, QuantTensor | RawTensor | Alias]:
    """Every state_dict entry as quant, raw or alias; a storage shared by several names is stored
    once, under its first name (quantized if any of its names is)."""
    state = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor; "
                              "fisherpack stores tensors only")  # fmt: skip
        if tensor.dtype not in {t for t, _ in DTYPES.values()}:
            raise ConfigError(f"tensor {name!r} has dtype {tensor.dtype}, which a .fpk file cannot hold; "
                              f"supported: {', '.join(DTYPES)}")  # fmt: skip
    seen: dict[tuple, str] = {}
    members: dict[str, list[str]] = {}  # first name -> every name sharing its storage
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        first = seen.setdefault(key, name) if tensor.numel() else name
        members.setdefault(first, []).append(name)
    tensors: dict[str, QuantTensor | RawTensor | Alias] = {}
    for first, names in members.items():
        tied = [n for n in names if n in quantized]
        tensors[first] = quantized[tied[0]] if tied else RawTensor(state[first].detach().clone().contiguous())
        tensors.update({n: Alias(first) for n in names[1:]})
    return {name: tensors[name] for name in state}


def _check_per_weight(d: Any, weights: dict[str, torch.Tensor], what: str, finite_nonnegative: bool = False) -> None:
    """ConfigError unless ``d`` has a tensor of the right shape for every compressed weight (masks:
    bool; a Fisher estimate: finite and >= 0, as a diagonal of squared gradients always is)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a dict of tensors keyed by parameter name, got {type(d).__name__}")
    for n, w in weights.items():
        t = d.get(n)
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"{what} has no tensor for {n!r}")
        if t.shape != w.shape:
            raise ConfigError(f"{what} for {n!r} has shape {tuple(t.shape)}, the weight has {tuple(w.shape)}")
        if what == "masks" and t.dtype != torch.bool:
            raise ConfigError(f"masks must be bool tensors (True = keep), {n!r} is {t.dtype}")
        if finite_nonnegative and not 0 <= (bounds := prune.value_range(t))[0] <= bounds[1] < math.inf:
            raise ConfigError(f"{what} for {n!r} has NaN, Inf or negative values")


def _vectors(model: nn.Module, config: CompressConfig, weight_names: list[str]) -> list[str]:
    """The 1-D (and scalar) tensors ``quantize_biases`` quantizes: by default every floating-point
    one not excluded (biases, norm scales); with ``include``, the ``bias`` beside each chosen weight."""
    params = dict(model.named_parameters())
    if config.include:
        candidates = [n[: -len("weight")] + "bias" for n in weight_names if n.endswith("weight")]
        return [n for n in candidates if n in params and params[n].is_floating_point()]
    return [
        n
        for n, p in params.items()
        if p.is_floating_point()
        and p.ndim < 2
        and n not in weight_names
        and not any(fnmatch.fnmatchcase(n, pat) for pat in config.exclude)
    ]


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
