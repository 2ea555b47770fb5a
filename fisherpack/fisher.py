"""Diagonal Fisher information of every parameter, three ways.

Every estimate is a ``dict[str, Tensor]`` keyed like ``model.named_parameters()``, each tensor the
shape of its parameter. For a classifier with logits ``f(x)`` and ``p(y | x) = softmax(f(x))_y``, the
diagonal Fisher of parameter ``theta_i`` is

    F_i = E_x E_{y ~ p(y|x)} [ (d log p(y|x) / d theta_i)^2 ].

- :func:`from_adam` (the paper's estimator, no pass over data): Adam's ``exp_avg_sq`` ``v``, an
  exponential moving average (weight ``1 - beta2``, horizon ~``1/(1 - beta2)`` steps) of the squared
  *mini-batch mean* gradient with the true labels. Near convergence ``v ~ F_emp / batch_size``, so it
  ranks like the empirical Fisher; its scale is not that of F. ``bias_correction=True`` divides by
  ``1 - beta2**t``, a scalar shared by all parameters of a step, so it never changes a ranking.
- :func:`empirical`: ``mean_n (d log p(y_n|x_n) / d theta)^2`` over samples with their true labels,
  from per-sample gradients (``torch.func.vmap(grad)``), accumulated in float64.
- :func:`sampled` (the "true" Fisher): the same with ``y_n`` drawn from the model's own softmax,
  one draw per sample, with a seeded generator.

Both data estimators run the model in eval mode (BatchNorm uses its running statistics) and return
float32 tensors (float64 if the model is float64). ``loss_fn(output, target)`` is the negative
log-likelihood of one sample (default: cross-entropy on logits); it must sum, not average, over
anything but the batch of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .data import check_labels
from .errors import ConfigError

__all__ = ["from_adam", "empirical", "sampled", "per_sample_square_sum"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def from_adam(
    optimizer: torch.optim.Optimizer, model: nn.Module, *, bias_correction: bool = False
) -> dict[str, torch.Tensor]:
    """Adam's (or AdamW's) ``exp_avg_sq`` for each named parameter of ``model``.

    Raises ConfigError if a trainable parameter has no Adam state (not an Adam optimizer, or it
    has not stepped yet).
    """
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        state = optimizer.state.get(param, {})
        if "exp_avg_sq" not in state:
            raise ConfigError(
                f"the optimizer has no Adam state (exp_avg_sq) for parameter {name!r}; train with "
                "Adam/AdamW for at least one step, or estimate the Fisher from data (empirical/sampled)"
            )
        v = state["exp_avg_sq"].detach().clone()
        if bias_correction:
            beta2 = _beta2(optimizer, param)
            step = float(state["step"])
            v /= 1.0 - beta2**step
        out[name] = v
    return out


def _beta2(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return float(group["betas"][1])
    raise ConfigError("parameter not found in the optimizer's parameter groups")


def empirical(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None = None,
    chunk: int = 256,
    loss_fn: LossFn | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical Fisher: mean over samples of squared per-sample gradients with the true labels."""
    return _fisher(model, batches, n_samples=n_samples, chunk=chunk, loss_fn=loss_fn, generator=None)


def sampled(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None = None,
    chunk: int = 256,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> dict[str, torch.Tensor]:
    """True Fisher (Monte Carlo): labels drawn from the model's softmax, one draw per sample."""
    generator = torch.Generator().manual_seed(seed)
    return _fisher(model, batches, n_samples=n_samples, chunk=chunk, loss_fn=loss_fn, generator=generator)


def _nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target, reduction="sum")


def _fisher(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None,
    chunk: int,
    loss_fn: LossFn | None,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
    sums, count = per_sample_square_sum(
        model, batches, n_samples=n_samples, chunk=chunk, loss_fn=loss_fn, generator=generator
    )
    if count == 0:
        raise ConfigError("no samples to estimate the Fisher information from; give a non-empty data set")
    dtype = next(iter(model.parameters())).dtype
    return {name: (s / count).to(dtype) for name, s in sums.items()}


def per_sample_square_sum(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None = None,
    chunk: int = 256,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Float64 sums of squared per-sample gradients and the number of samples summed.

    With ``generator`` the label of each sample is drawn from the model's softmax instead of taken
    from the data. Exposed so that distributed runs can all-reduce sums and counts before dividing.
    """
    loss_fn = loss_fn or _nll
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})

    def sample_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, frozen), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for xb, yb in batches:
            for start in range(0, len(xb), chunk):
                if n_samples is not None and count >= n_samples:
                    break
                stop = start + chunk if n_samples is None else min(start + chunk, start + n_samples - count)
                x, y = xb[start:stop], yb[start:stop]
                if loss_fn is _nll and generator is None:  # true labels: they must fit the model
                    with torch.no_grad():
                        check_labels(y, model(x[:1]).shape[-1])
                if generator is not None:
                    with torch.no_grad():
                        probs = torch.softmax(model(x).double(), dim=-1)  # (n, classes)
                    y = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                grads = per_sample_grad(params, x, y)  # each (n, *param.shape)
                for name, g in grads.items():
                    sums[name] += g.double().square().sum(0)
                count += len(x)
            if n_samples is not None and count >= n_samples:
                break
    finally:
        model.train(was_training)
    return sums, count
