"""Inference that gains from pruning: sparse Linear layers, chosen per layer where measured faster.

A pruned ``nn.Linear`` whose weight is mostly zero can run as a sparse matrix product: the weight
is held in CSR form (row pointers, int32 column indices, float32 values: about 8 bytes per kept
weight instead of 4 per weight) and the product uses torch's sparse CSR kernels (Intel MKL's on
x86 CPU builds). Two sparse kernels are tried: ``addmm`` computes ``(W @ x.T + b).T``, ``linear``
passes the CSR weight to ``F.linear``; at batch 1 the second is often the faster.

Sparse is not always faster: a layer with many survivors, or a small one at batch 1, runs better
dense. :func:`optimize` therefore **measures at conversion time**: it runs the model on the
example inputs you give (one per batch size you care about), records each candidate layer's
input, and times the dense product against both sparse kernels on it, interleaving repetitions and
taking medians (a sample repeats a fast call for about 1 ms). Each layer gets, per measured batch
size, the fastest of ``dense``, ``addmm`` and ``linear``; other batch sizes use the choice of the
nearest measured one (in log scale). A layer
where dense always wins stays an ``nn.Linear``; a layer where sparse always wins keeps only its
CSR weight; a layer that needs both keeps both. Layers below ``min_sparsity`` are not even timed.
The choice depends on the machine, its load and thread count, and on the example batch sizes; the
returned report says what was measured and chosen.

Outputs equal the dense model's up to float32 summation order (about 1e-6 relative). Only exact
``nn.Linear`` modules on CPU in float32 are converted (subclasses may have their own forward, e.g.
the output projection of ``nn.MultiheadAttention``); the result is for inference only (no
gradients), and convolutions stay dense. A converted model's ``state_dict()`` keeps the keys and
(dense) values of the layers it replaced, so it saves, loads and compresses like the original.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .fpk.tensors import Compressed
from .loading import load_into

__all__ = ["KERNELS", "SPARSE_KERNELS", "SparseLinear", "optimize", "from_file"]

SPARSE_KERNELS = ("addmm", "linear")
KERNELS = ("dense", *SPARSE_KERNELS)


def _csr(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) dense -> CSR with int32 indices (MKL's native index type: no conversion per call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        c = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            c.crow_indices().to(torch.int32),
            c.col_indices().to(torch.int32),
            c.values(),
            size=tuple(weight.shape),
            check_invariants=True,
        )


def _sparse_product(kernel: str, csr: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(n, in) -> (n, out) with one of the SPARSE_KERNELS."""
    if kernel == "linear":
        return nn.functional.linear(x, csr, bias)
    if bias is None:
        return torch.sparse.mm(csr, x.t()).t()
    return torch.addmm(bias.unsqueeze(1), csr, x.t()).t()  # (out, n) -> (n, out)


class SparseLinear(nn.Module):
    """A Linear layer with a CSR weight, for inference. ``kernels`` maps measured batch sizes to
    one of :data:`KERNELS`; other batch sizes use the nearest one in log scale. The dense weight
    is kept only if some batch size uses ``dense``."""

    def __init__(self, linear: nn.Linear, kernels: dict[int, str]) -> None:
        super().__init__()
        if not kernels or any(k not in KERNELS for k in kernels.values()):
            raise ConfigError(f"kernels must map batch sizes to one of {KERNELS}, got {kernels}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_csr = _csr(linear.weight)
        uses_dense = "dense" in kernels.values()
        self.weight_dense = linear.weight.detach().clone() if uses_dense else None
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.kernels = dict(sorted(kernels.items()))
        self._chosen: dict[int, str] = {}  # batch size -> kernel, filled on first use

    def kernel_for(self, n: int) -> str:
        kernel = self._chosen.get(n)
        if kernel is None:
            kernel = min(self.kernels.items(), key=lambda kv: abs(math.log(max(n, 1)) - math.log(kv[0])))[1]
            self._chosen[n] = kernel
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x if x.ndim == 2 else x.reshape(-1, self.in_features)  # (n, in)
        kernel = self.kernel_for(flat.shape[0])
        if kernel == "dense":
            out = nn.functional.linear(flat, self.weight_dense, self.bias)
        else:
            out = _sparse_product(kernel, self.weight_csr, self.bias, flat)
        return out if x.ndim == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # the keys and dense values of the nn.Linear it replaced: state_dict() stays complete
        destination[prefix + "weight"] = self.weight_dense if self.weight_dense is not None else self._dense()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def _dense(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.weight_csr.to_dense()

    def _load_from_state_dict(self, state, prefix, metadata, strict, missing, unexpected, errors) -> None:  # noqa: ANN001
        weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
        if weight is None:
            missing.append(prefix + "weight")
        elif tuple(weight.shape) != (self.out_features, self.in_features):
            errors.append(f"size mismatch for {prefix}weight: {tuple(weight.shape)} in the state dict")
        else:
            self.weight_csr = _csr(weight)
            if self.weight_dense is not None:
                self.weight_dense = weight.detach().clone()
        if self.bias is not None and bias is None:
            missing.append(prefix + "bias")
        elif self.bias is not None:
            self.bias = bias.detach().clone()

    def extra_repr(self) -> str:
        nnz = self.weight_csr.values().numel()
        return f"in={self.in_features}, out={self.out_features}, kept={nnz}, kernels={self.kernels}"


def _median_ms(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median wall time of each function in ms. Repetitions are interleaved so that drifts in
    machine load hit every candidate alike; a sample repeats a fast call for about 1 ms."""
    inner = {}
    for k, fn in fns.items():
        fn()  # warm-up: first calls allocate and pick code paths
        start = time.perf_counter()
        fn()
        inner[k] = min(1000, max(1, int(1e-3 / max(time.perf_counter() - start, 1e-7))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[k]):
                fn()
            times[k].append((time.perf_counter() - start) / inner[k])
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _time_kernels(module: nn.Linear, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms of each of KERNELS for ``module`` on input ``x`` (n, in)."""
    csr, w = _csr(module.weight), module.weight.detach()
    b = None if module.bias is None else module.bias.detach()
    fns = {"dense": functools.partial(nn.functional.linear, x, w, b)}
    fns.update({k: functools.partial(_sparse_product, k, csr, b, x) for k in SPARSE_KERNELS})
    with torch.no_grad():
        return _median_ms(fns, repeats)


def _layer_inputs(model: nn.Module, names: list[str], examples: Sequence[Any]) -> dict[str, list[torch.Tensor]]:
    """The input of each named layer (its first call) in a forward pass over each example."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                current.setdefault(name, args[0].detach())

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for example in examples:
                current.clear()
                model(*(example if isinstance(example, tuple) else (example,)))
                for n in names:
                    if n in current:
                        seen[n].append(current[n].reshape(-1, current[n].shape[-1]))
    finally:
        for h in handles:
            h.remove()
    return seen


def optimize(
    model: nn.Module, *examples: Any, min_sparsity: float = 0.5, repeats: int = 7
) -> dict[str, dict[str, Any]]:
    """Replace pruned Linear layers of ``model`` (in place) by :class:`SparseLinear` where measured
    faster on ``examples`` (inputs of the model: a tensor, or a tuple of positional inputs; give
    one per batch size you will run). The model is put in eval mode.

    Returns, per candidate layer: ``density`` (kept fraction), ``sparse`` (converted or not),
    ``kernels`` (batch size -> fastest kernel) and ``ms`` (batch size -> median ms of each kernel).
    """
    if not examples:
        raise ConfigError("optimize needs at least one example input to measure the layers on")
    if not 0.0 <= min_sparsity <= 1.0 or repeats < 1:
        raise ConfigError(f"min_sparsity must be in [0, 1] and repeats >= 1, got {min_sparsity}, {repeats}")
    model.eval()
    candidates = {}
    for name, module in model.named_modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu":
            density = float((module.weight != 0).float().mean())
            if 1.0 - density >= min_sparsity:
                candidates[name] = (module, density)
    inputs = _layer_inputs(model, list(candidates), examples)
    report: dict[str, dict[str, Any]] = {}
    for name, (module, density) in candidates.items():
        if not inputs[name]:
            continue  # never called in the examples: leave it alone
        timings = {len(x): _time_kernels(module, x, repeats) for x in inputs[name]}
        kernels = {n: min(KERNELS, key=lambda k, ms=ms: ms[k]) for n, ms in timings.items()}  # ties: dense
        faster = any(k != "dense" for k in kernels.values())
        report[name] = {"density": density, "sparse": faster, "kernels": kernels, "ms": timings}
        if faster:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, SparseLinear(module, kernels))
    return report


def from_file(
    model: nn.Module, source: Compressed | str | os.PathLike, *examples: Any, **options: Any
) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """Load a .fpk file (or a Compressed) into ``model`` and :func:`optimize` it for ``examples``;
    returns (model, report)."""
    load_into(model, source)
    return model, optimize(model, *examples, **options)
