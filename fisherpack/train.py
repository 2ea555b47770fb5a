"""Training, masked fine-tuning and evaluation of classifiers on in-memory tensors.

Conventions: the loss is the mean cross-entropy over a mini-batch; Adam/AdamW as in PyTorch. With
``masks``, the gradients of pruned entries are zeroed before each step (so Adam's moments of pruned
weights decay instead of tracking them) and the masks are re-applied after each step (Adam's
momentum would otherwise move a pruned weight off zero): pruned weights stay exactly zero.
The library never prints: progress goes to ``on_batch(n_images, loss)``.

Under torch.distributed (a process group of N ranks, see dist.py) the model must be wrapped in
DistributedDataParallel (``dist.wrap``). Every rank draws the same permutation and mini-batches of
``batch_size`` (the *global* batch B); each rank computes on its shard (positions r, r + N, ... of
the batch, B/N samples). Its loss is ``sum of its per-sample losses * N / B`` instead of the mean:
DDP averages the gradients over ranks, so the gradient every rank applies is exactly the mean over
the B samples of the global batch, like one process with batch B (a short last batch included,
whose shards differ in size). Masks are applied after that average, identically on every rank.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from . import dist
from .data import batches, check_labels
from .errors import ConfigError
from .losses import cross_entropy
from .prune import apply_masks

__all__ = [
    "Recipe",
    "train_step",
    "train_epoch",
    "shift_images",
    "batch_limit",
    "epoch_images",
    "evaluate",
    "measure",
    "predict_error",
]

OnBatch = Callable[[int, float], None]


@dataclass(frozen=True)
class Recipe:
    """What a training step does beyond plain cross-entropy on the mini-batch.

    fake_quant: name -> function of the float weight; the forward pass uses the transformed
        weights (quantization-aware training, see quant.FakeQuant) and the gradient reaches the
        float weights through them.
    teacher, distill (a in (0, 1]), temperature T: knowledge distillation; the per-sample loss is
        ``(1 - a) * CE(out, y) + a * T**2 * KL(softmax(teacher / T) || softmax(out / T))``.
    augment: k > 0 shifts every training image by a random whole number of pixels in [-k, k] in
        each direction (zero fill), drawn from a generator seeded by (seed, epoch).
    loss: ``loss(output, target)``, the mean over the mini-batch (see losses.py), in place of
        cross-entropy on ``(N, classes)`` logits; any output shape.
    """

    fake_quant: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None
    teacher: nn.Module | None = None
    distill: float = 0.0
    temperature: float = 4.0
    augment: int = 0
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


PLAIN = Recipe()


def batch_limit(n: int, batch_size: int, fraction: float) -> int:
    """Mini-batches in the first ``fraction`` of an epoch over ``n`` samples (at least one if > 0)."""
    return max(1, math.ceil(fraction * math.ceil(n / batch_size))) if fraction > 0 else 0


def epoch_images(n: int, batch_size: int, fraction: float = 1.0) -> int:
    """Images that :func:`train_epoch` processes for that fraction (for progress totals)."""
    return min(n, batch_limit(n, batch_size, fraction) * batch_size)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    masks: dict[str, torch.Tensor] | None = None,
    global_size: int | None = None,
    recipe: Recipe = PLAIN,
    teacher_soft: Future | None = None,
) -> float:
    """One optimizer step on a mini-batch; returns the mean cross-entropy over ``(xb, yb)``.

    ``teacher_soft``: the distillation targets of ``xb`` (:func:`soft_targets`) being computed
    elsewhere, as a Future; by default they are computed here.

    On one process the loss is the mean over ``xb``. Under DDP ``(xb, yb)`` is this rank's shard
    of a global batch of ``global_size`` samples and the loss is scaled as the module docstring
    says. Pruned entries (``masks``, keyed like the unwrapped model's parameters) get no gradient
    and are re-zeroed after the step.
    """
    inner = dist.unwrap(model)
    params = dict(inner.named_parameters())
    optimizer.zero_grad(set_to_none=True)
    if recipe.fake_quant:
        prefix = "" if inner is model else "module."  # parameter names inside the DDP wrapper
        replaced = {prefix + n: fq(params[n]) for n, fq in recipe.fake_quant.items()}
        out = torch.func.functional_call(model, replaced, (xb,))
    else:
        out = model(xb)
    reduction = "mean" if dist.world_size() == 1 else "sum"
    if recipe.loss is not None or out.ndim != 2:  # any output shape: see losses.py
        loss = (recipe.loss or cross_entropy)(out, yb) * (1 if reduction == "mean" else len(xb))
    else:
        check_labels(yb, out.shape[1])  # cross-entropy would fail with an index error deep in torch
        loss = nn.functional.cross_entropy(out, yb, reduction=reduction)
    if recipe.teacher is not None and recipe.distill > 0:
        t = recipe.temperature
        soft = teacher_soft.result() if teacher_soft is not None else soft_targets(recipe, xb)
        kl = nn.functional.kl_div(
            torch.log_softmax(out / t, dim=-1),
            soft,
            log_target=True,
            reduction="batchmean" if reduction == "mean" else "sum",
        )
        loss = (1 - recipe.distill) * loss + recipe.distill * t**2 * kl
    if dist.world_size() == 1:
        loss.backward()
        mean = float(loss.detach())
    else:
        (loss * (dist.world_size() / (global_size or len(xb)))).backward()  # DDP then averages over ranks
        mean = float(loss.detach()) / max(len(xb), 1)
    if masks is not None:
        for name, mask in masks.items():
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
    optimizer.step()
    if masks is not None:
        apply_masks(dist.unwrap(model), masks)
    return mean


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
    recipe: Recipe = PLAIN,
) -> float:
    """One pass (or the first ``fraction`` of one) over shuffled data; returns the mean loss.

    ``recipe`` adds quantization-aware training, distillation or augmentation (see Recipe).

    Under DDP every rank returns the mean loss over all ranks' samples, and ``on_batch`` gets the
    images of the global batch (every rank's share) with this rank's mean loss.
    """
    n_ranks = dist.world_size()
    if n_ranks > 1 and dist.unwrap(model) is model:
        raise ConfigError("under torch.distributed, train the model wrapped by fisherpack.dist.wrap(model) (DDP)")
    model.train()
    limit = batch_limit(len(x), batch_size, fraction)
    total, count = 0.0, 0
    shifts = torch.Generator().manual_seed(seed * 1_000_003 + epoch) if recipe.augment else None

    def shifted() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in itertools.islice(batches(x, y, batch_size, shuffle=True, seed=seed, epoch=epoch), limit):
            if shifts is not None:  # the whole global batch, so every rank agrees on every shift
                xb = shift_images(xb, recipe.augment, shifts)
            yield xb, yb

    ahead = limit > 0 and len(x) > 0 and _teacher_ahead(recipe) and not _draws_random(recipe, x[:batch_size])
    with ThreadPoolExecutor(1, thread_name_prefix="fisherpack-teacher") if ahead else nullcontext() as pool:
        # the worker gets its own copy of the batch: a model may change its input in place
        submit = (lambda b: pool.submit(soft_targets, recipe, b[0].clone())) if ahead else (lambda b: None)
        for (xb, yb), soft in _one_ahead(shifted(), submit):
            local_x, local_y = dist.shard(xb), dist.shard(yb)
            loss = train_step(
                model, optimizer, local_x, local_y, masks=masks, global_size=len(xb), recipe=recipe, teacher_soft=soft
            )
            total += loss * len(local_x)
            count += len(local_x)
            if on_batch is not None:
                on_batch(len(xb), loss)
    if n_ranks > 1:  # the mean over every rank's samples, the same on all ranks
        sums, count = dist.all_reduce_sums({"loss": torch.tensor(total, dtype=torch.float64)}, count)
        total = float(sums["loss"])
    return total / max(count, 1)


def soft_targets(recipe: Recipe, xb: torch.Tensor) -> torch.Tensor:
    """The teacher's log-probabilities of ``xb`` at the recipe's temperature: (B, ..., classes)."""
    with torch.no_grad():  # (grad mode is per thread: this may run on another one)
        return torch.log_softmax(recipe.teacher(xb) / recipe.temperature, dim=-1)


def _teacher_ahead(recipe: Recipe) -> bool:
    """Whether to compute each batch's distillation targets on a second thread while the step
    before it trains: on one process with a core to spare for it (the frozen teacher's forward pass
    is about a quarter of a LeNet-5 step). The targets are the same either way, bit for bit: the
    same operations on the same inputs, each with this process's torch thread count."""
    if recipe.teacher is None or recipe.distill <= 0 or dist.world_size() > 1:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores > torch.get_num_threads()


def _draws_random(recipe: Recipe, xb: torch.Tensor) -> bool:
    """Whether the teacher's forward pass on ``xb`` draws from torch's global generator (a model may,
    even in eval mode). Such a teacher's targets stay in the step, in their usual order: two threads
    drawing from one generator would make the weights depend on timing. The generator is put back."""
    state = torch.get_rng_state()
    soft_targets(recipe, xb)
    drew = not torch.equal(state, torch.get_rng_state())
    torch.set_rng_state(state)
    return drew


def _one_ahead(items: Iterable, submit: Callable) -> Iterator[tuple]:
    """(item, submit(item)) for each item, with the next item's submit() called before this pair is
    yielded: its work overlaps the caller's work on this one."""
    it = iter(items)
    current = next(it, None)
    job = submit(current) if current is not None else None
    while current is not None:
        following = next(it, None)
        following_job = submit(following) if following is not None else None
        yield current, job
        current, job = following, following_job


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


@torch.no_grad()
def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, metric, batch_size: int = 1000) -> float:
    """``metric`` (see losses.py: a function of (output, target) -> (total, count)) over ``x``, ``y``
    in eval mode: the sum of the totals over the sum of the counts."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(x), batch_size):
            t, n = metric(model(x[start : start + batch_size]), y[start : start + batch_size])
            total, count = total + t, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("no samples to measure the model on; give non-empty data")
    return total / count


def predict_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test error rate only."""
    return evaluate(model, x, y)[0]
