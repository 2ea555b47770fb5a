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


def small_models() -> dict[str, nn.Module]:
    """A seeded grid of small models of the layer kinds compress() handles, for oracle and bound
    tests: each call returns fresh models with the same weights."""
    torch.manual_seed(1234)
    return {
        "mlp": nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10)),
        "conv": nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 24, 3, groups=4)),
        "conv1d": nn.Sequential(nn.Conv1d(8, 32, 5), nn.ReLU(), nn.Conv1d(32, 32, 3, dilation=2)),
        "embedding": nn.Sequential(nn.Embedding(200, 48), nn.Linear(48, 48)),
    }


def benchmark_script(name: str):
    """A script of benchmarks/ as a module (the scripts that time whole processes stay scripts)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
