"""Training, masked fine-tuning and evaluation of classifiers on in-memory tensors.

Conventions: the loss is the mean cross-entropy over a mini-batch; Adam/AdamW as in PyTorch. With
``masks``, the gradients of pruned entries are zeroed before each step (so Adam's moments of pruned
weights decay instead of tracking them) and the masks are re-applied after each step (Adam's
momentum would otherwise move a pruned weight off zero): pruned weights stay exactly zero.
The library never prints: progress goes to ``on_batch(n_images, loss)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .data import batches, check_labels
from .prune import apply_masks

__all__ = ["train_epoch", "shift_images", "batch_limit", "epoch_images", "evaluate", "predict_error"]

OnBatch = Callable[[int, float], None]


def batch_limit(n: int, batch_size: int, fraction: float) -> int:
    """Mini-batches in the first ``fraction`` of an epoch over ``n`` samples (at least one if > 0)."""
    return max(1, math.ceil(fraction * math.ceil(n / batch_size))) if fraction > 0 else 0


def epoch_images(n: int, batch_size: int, fraction: float = 1.0) -> int:
    """Images that :func:`train_epoch` processes for that fraction (for progress totals)."""
    return min(n, batch_limit(n, batch_size, fraction) * batch_size)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    masks: dict[str, torch.Tensor] | None = None,
    fraction: float = 1.0,
    on_batch: OnBatch | None = None,
    fake_quant: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
    augment: int = 0,
) -> float:
    """One pass (or the first ``fraction`` of one) over shuffled data; returns the mean loss.

    With ``fake_quant`` (name -> function of the float weight), the forward pass uses the
    transformed weights (quantization-aware training; see quant.FakeQuant) and the gradient
    reaches the float weights through them.

    With a ``teacher`` and ``distill`` = a in (0, 1], the loss is knowledge distillation:
    ``(1 - a) * CE(out, y) + a * T**2 * KL(softmax(teacher / T) || softmax(out / T))``, T = ``temperature``.

    ``augment`` = k > 0 shifts every training image by a random whole number of pixels in
    ``[-k, k]`` in each direction (zero fill), drawn from a generator seeded by (seed, epoch).
    """
    model.train()
    params = dict(model.named_parameters())
    limit = batch_limit(len(x), batch_size, fraction)
    total, count = 0.0, 0
    shifts = torch.Generator().manual_seed(seed * 1_000_003 + epoch) if augment else None
    for i, (xb, yb) in enumerate(batches(x, y, batch_size, shuffle=True, seed=seed, epoch=epoch)):
        if i >= limit:
            break
        if shifts is not None:
            xb = shift_images(xb, augment, shifts)
        optimizer.zero_grad(set_to_none=True)
        if fake_quant:
            replaced = {n: fq(params[n]) for n, fq in fake_quant.items()}
            out = torch.func.functional_call(model, replaced, (xb,))
        else:
            out = model(xb)
        check_labels(yb, out.shape[1])  # cross-entropy would fail with an index error deep in torch
        loss = nn.functional.cross_entropy(out, yb)
        if teacher is not None and distill > 0:
            with torch.no_grad():
                soft = torch.log_softmax(teacher(xb) / temperature, dim=1)  # (B, classes)
            kl = nn.functional.kl_div(
                torch.log_softmax(out / temperature, dim=1), soft, log_target=True, reduction="batchmean"
            )
            loss = (1 - distill) * loss + distill * temperature**2 * kl
        loss.backward()
        if masks is not None:
            for name, mask in masks.items():
                if params[name].grad is not None:
                    params[name].grad.mul_(mask)
        optimizer.step()
        if masks is not None:
            apply_masks(model, masks)
        total += float(loss.detach()) * len(xb)
        count += len(xb)
        if on_batch is not None:
            on_batch(len(xb), float(loss.detach()))
    return total / max(count, 1)


def shift_images(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) images each shifted by its own random offset in [-k, k]^2, zero-filled."""
    n, c, h, w = x.shape
    background = x.amin()  # the normalised value of a black pixel
    padded = nn.functional.pad(x, (k, k, k, k), value=float(background))  # (N, C, H+2k, W+2k)
    dy, dx = torch.randint(0, 2 * k + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(error rate, mean cross-entropy) of ``model`` on ``x``, ``y`` in eval mode."""
    was_training = model.training
    model.eval()
    wrong, loss = 0, 0.0
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        check_labels(target, out.shape[1])
        wrong += int((out.argmax(1) != target).sum())
        loss += float(nn.functional.cross_entropy(out, target, reduction="sum"))
    model.train(was_training)
    n = max(len(x), 1)
    return wrong / n, loss / n


def predict_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test error rate only."""
    return evaluate(model, x, y)[0]
