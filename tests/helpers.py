"""Reference implementations shared by tests: slow, obvious, float64."""

import torch
from torch import nn


def per_sample_square_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum over samples of squared per-sample NLL gradients: one autograd pass per sample."""
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for n, p in model.named_parameters():
            sums[n] += p.grad**2
    return sums
