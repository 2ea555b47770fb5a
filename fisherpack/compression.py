"""The one verb: ``compress(model, fisher, config) -> Compressed`` (its inverse is loading.py).

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
from typing import Any

import torch
from torch import nn

from . import prune, quant
from .config import CompressConfig
from .errors import ConfigError
from .fpk.container import DTYPES
from .fpk.tensors import Alias, Compressed, QuantTensor, RawTensor
from .version import __version__

__all__ = [
    "COMPRESSIBLE_LAYERS",
    "compressible",
    "compress",
    "select_masks",
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
