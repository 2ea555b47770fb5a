"""The one verb: ``compress(model, fisher, config) -> Compressed``, and its inverse.

Which tensors are compressed: by default the ``weight`` of every Linear, Conv1d/2d/3d and
Embedding layer; ``config.include`` (fnmatch patterns on parameter names) replaces that choice and
``config.exclude`` removes from it. Every other parameter and buffer is stored losslessly; a tensor
shared by several names (tied weights) is stored once and recorded as an alias.

Already-zero weights of a compressed tensor count as pruned, so a model pruned elsewhere (or by
:mod:`fisherpack.pipeline`) keeps its sparsity; ``config.rate`` prunes further to that rate with
``config.criterion`` (see prune.py), then the kept entries are quantized (see quant.py).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, prune, quant
from .config import CompressConfig
from .errors import ConfigError
from .tensors import Alias, Compressed, QuantTensor, RawTensor

__all__ = ["COMPRESSIBLE_LAYERS", "compressible", "compress", "decompress", "load_into", "summary"]

COMPRESSIBLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def compressible(model: nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """Names of the parameters to prune and quantize (see module docstring)."""
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    if include:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in include)]
    else:
        chosen = [
            f"{prefix}.weight" if prefix else "weight"
            for prefix, module in model.named_modules()
            if isinstance(module, COMPRESSIBLE_LAYERS) and isinstance(getattr(module, "weight", None), nn.Parameter)
        ]
        chosen = [n for n in names if n in set(chosen)]
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)]


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
        raise ConfigError("the model has no weights to compress (no Linear/Conv/Embedding weight matched)")
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().float() for n in names}
    for n, w in weights.items():
        if not torch.isfinite(w).all():
            raise ConfigError(f"weight {n!r} has NaN or Inf values; fix the model before compressing")
    prunes_by_fisher = config.rate > 0 and masks is None and config.criterion in ("fisher", "obd", "two_stage")
    if fisher is None and (prunes_by_fisher or config.allocation != "uniform"):
        use = f"criterion {config.criterion!r}" if prunes_by_fisher else f"allocation {config.allocation!r}"
        raise ConfigError(f"{use} needs a Fisher estimate (see fisherpack.fisher); without one use criterion "
                          "magnitude or random and allocation uniform")  # fmt: skip
    if fisher is not None:
        _check_per_weight(fisher, weights, "the Fisher estimate", finite_nonnegative=True)
    if masks is not None:
        _check_per_weight(masks, weights, "masks")
    if masks is None:
        masks = {n: w != 0 for n, w in weights.items()}
        if config.rate > 0:
            masks = prune.select(
                config.criterion,
                weights,
                fisher,
                config.rate,
                scope=config.scope,
                current=masks,
                magnitude_share=config.magnitude_share,
                seed=config.seed,
            )
    if config.quantize_biases:  # quantized like the weights, never pruned
        masks = dict(masks)
        for n in _biases_of(params, names):
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
    )
    tensors: dict[str, QuantTensor | RawTensor | Alias] = {}
    first_name: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in first_name:
            tensors[name] = Alias(first_name[key])
            continue
        first_name[key] = name
        if name in quantized:
            tensors[name] = quantized[name]
        else:
            tensors[name] = RawTensor(tensor.detach().clone().contiguous())
    header = {"fisherpack": __version__, "config": config.to_dict()}
    header.update(meta or {})
    return Compressed(tensors, header)


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
        if finite_nonnegative and not (torch.isfinite(t).all() and (t >= 0).all()):
            raise ConfigError(f"{what} for {n!r} has NaN, Inf or negative values")


def _biases_of(params: dict[str, nn.Parameter], weight_names: list[str]) -> list[str]:
    """The ``bias`` beside each ``weight`` name, where the layer has one."""
    candidates = [n[: -len("weight")] + "bias" for n in weight_names if n.endswith("weight")]
    return [n for n in candidates if n in params and params[n].is_floating_point()]


def decompress(compressed: Compressed) -> dict[str, torch.Tensor]:
    """The decoded state dict (quantized weights bit-exact, other tensors as stored)."""
    return compressed.state_dict()


def load_into(model: nn.Module, compressed: Compressed) -> nn.Module:
    """Load a decoded file into ``model`` in place; ConfigError naming the first mismatch."""
    decoded = decompress(compressed)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in decoded:
            raise ConfigError(f"the file has no tensor {name!r} that the model expects; is it the right model?")
        if tuple(decoded[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"tensor {name!r} has shape {tuple(decoded[name].shape)} in the file but "
                f"{tuple(tensor.shape)} in the model; is it the right model?"
            )
    extra = [n for n in decoded if n not in expected]
    if extra:
        raise ConfigError(f"the file has a tensor {extra[0]!r} that the model does not; is it the right model?")
    model.load_state_dict(decoded)
    return model


def summary(compressed: Compressed, file_bytes: int) -> dict[str, Any]:
    """Figures of a compressed model: sizes against fp32, kept weights, average code bits."""
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
    return {
        "params": params,
        "nonzero_params": nonzero,
        "kept_fraction": nonzero / max(params, 1),
        "param_ratio": params / max(nonzero, 1),
        "avg_bits": code_bits / max(kept, 1),
        "file_bytes": file_bytes,
        "fp32_bytes": fp32_bytes,
        "ratio": fp32_bytes / max(file_bytes, 1),
    }
