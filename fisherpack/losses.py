"""Losses and metrics for any output shape: what the pipeline trains on and measures.

Conventions. A *loss* maps ``(output, target)`` of a mini-batch to a scalar; fisherpack's default,
:func:`cross_entropy`, is the **mean** negative log-likelihood over every prediction in the batch
(over samples for ``(N, classes)`` logits, over samples and positions for ``(N, T, classes)``
sequence logits), and the mean squared error / 2 for float targets of the output's shape
(a unit-variance Gaussian likelihood). :func:`nll_sum` is the same negative log-likelihood
**summed**, what the per-sample Fisher differentiates (fisher.py).

A *metric* maps ``(output, target)`` to ``(total, count)``: the pipeline sums both over the
batches and reports ``total / count``, lower is better. :func:`error` counts wrong arg-max
predictions; :func:`bits_per_token` sums the cross-entropy in bits (a byte-level model's bits per
byte); :func:`mse` sums squared errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .data import check_labels
from .errors import DataError

__all__ = ["Loss", "Metric", "cross_entropy", "nll_sum", "error", "bits_per_token", "mse", "METRICS"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], tuple[float, int]]


def _kind(output: torch.Tensor, target: torch.Tensor) -> str:
    """``"classes"`` (integer targets, one per row of logits) or ``"regression"`` (float targets of
    the output's shape); DataError (one line) naming both shapes otherwise."""
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise DataError(f"the model's output and the targets must be tensors, got {type(output).__name__} "
                        f"and {type(target).__name__}; pass a loss function for other outputs")  # fmt: skip
    if target.is_floating_point():
        if target.shape != output.shape:
            raise DataError(f"float targets {tuple(target.shape)} must have the output's shape {tuple(output.shape)} "
                            "(regression), or be integer class labels")  # fmt: skip
        return "regression"
    if output.ndim < 2 or tuple(output.shape[:-1]) != tuple(target.shape):
        raise DataError(f"integer labels {tuple(target.shape)} must have the output's shape without its last "
                        f"dimension (classes); the model gave {tuple(output.shape)}")  # fmt: skip
    check_labels(target, output.shape[-1])
    return "classes"


def check_targets(output: torch.Tensor, target: torch.Tensor) -> None:
    """DataError (one line) unless ``target`` fits ``output`` for :func:`nll_sum`, checking the
    shapes on the first sample and every label's range (the check cannot run under vmap)."""
    _kind(output[:1], target[:1])
    if not target.is_floating_point():
        check_labels(target, output.shape[-1])


def nll_sum_unchecked(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`nll_sum` without its checks (no data-dependent Python control flow: vmap can run it)."""
    if target.is_floating_point():
        return 0.5 * (output - target).square().sum()
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="sum")


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every prediction (see module docstring)."""
    if _kind(output, target) == "regression":
        return 0.5 * (output - target).square().mean()
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def nll_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood (the Fisher's per-sample loss; see module docstring)."""
    if _kind(output, target) == "regression":
        return 0.5 * (output - target).square().sum()
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="sum")


def error(output: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    """(wrong arg-max predictions, predictions)."""
    _kind(output, target)
    return float((output.argmax(-1) != target).sum()), target.numel()


def bits_per_token(output: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    """(cross-entropy in bits summed over predictions, predictions)."""
    return float(nll_sum(output.double(), target)) / math.log(2), target.numel()


def mse(output: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    """(summed squared error, elements)."""
    _kind(output, target)
    return float((output.double() - target.double()).square().sum()), target.numel()


METRICS: dict[str, Metric] = {"error": error, "bits_per_token": bits_per_token, "mse": mse}
