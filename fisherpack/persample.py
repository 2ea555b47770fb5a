"""Per-sample gradients, squared and summed: the work behind the data Fisher estimators (fisher.py).

``torch.func.vmap(grad)`` runs the whole chunk at once; models that vmap cannot run (``nn.GRU`` and
other fused kernels) fall back to an exact per-sample autograd loop, after one notice. Sums are
float64 and returned with the sample count, so that distributed runs can all-reduce both before
dividing (fisher.py does).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .errors import ConfigError, DataError, FisherpackError
from .losses import check_targets, nll_sum, nll_sum_unchecked

__all__ = ["per_sample_square_sum", "FallbackNotice"]

Batches = Iterable[tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_square_sum(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None = None,
    chunk: int = 256,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    notice: Callable[[str], None] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Float64 sums of squared per-sample gradients and the number of samples summed.

    With ``generator`` the label of each sample is drawn from the model's softmax instead of taken
    from the data. Models that ``torch.func.vmap`` cannot run (``nn.GRU`` and other fused kernels)
    fall back to an exact per-sample autograd loop, after one ``notice`` (default: a
    FallbackNotice warning). Exposed so that distributed runs can all-reduce sums and counts before dividing.
    """
    loss_fn = loss_fn or nll_sum
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})

    def sample_loss(p: dict[str, torch.Tensor], xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, frozen), tuple(x.unsqueeze(0) for x in xs))
        return (nll_sum_unchecked if loss_fn is nll_sum else loss_fn)(out, y.unsqueeze(0))

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    count = 0
    exact = False  # switched on when vmap cannot run the model
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            xb, yb = _split_batch(batch)
            for start in range(0, len(yb), chunk):
                if n_samples is not None and count >= n_samples:
                    break
                stop = start + chunk if n_samples is None else min(start + chunk, start + n_samples - count)
                xs, y = tuple(x[start:stop] for x in xb), yb[start:stop]
                if generator is not None:
                    y = _draw(model, xs, generator)
                elif loss_fn is nll_sum:  # true targets: check them against the output in one line
                    with torch.no_grad():
                        check_targets(_forward(model, tuple(x[:1] for x in xs)), y)
                grads = None
                if not exact:
                    try:
                        grads = per_sample_grad(params, xs, y)  # each (n, *param.shape)
                    except FisherpackError:
                        raise
                    except Exception as exc:  # vmap cannot run it (e.g. nn.GRU): the exact loop
                        exact = True
                        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
                        (notice or _warn)(f"per-sample gradients by torch.func.vmap failed ({why}); "
                                          "using an exact per-sample loop (slower)")  # fmt: skip
                if grads is None:
                    grads = _loop_grads(model, params, xs, y, loss_fn)
                for name, g in grads.items():
                    sums[name] += g.double().square().sum(0)
                count += len(y)
            if n_samples is not None and count >= n_samples:
                break
    finally:
        model.train(was_training)
    return sums, count


class FallbackNotice(UserWarning):
    """The Fisher went the slower exact way (the model cannot run under torch.func.vmap)."""


def _warn(message: str) -> None:
    warnings.warn(message, FallbackNotice, stacklevel=3)


def _forward(model: nn.Module, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``model(*xs)``; a failure (wrong dtype or shape of the data) as one DataError line."""
    try:
        return model(*xs)
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        shapes = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in xs)
        raise DataError(f"the model cannot run on the data (inputs {shapes}): {line}") from None


def _draw(model: nn.Module, xs: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
    """Targets drawn from the model's softmax over its last dimension, one per prediction."""
    with torch.no_grad():
        logits = _forward(model, xs)
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        raise ConfigError("the sampled Fisher draws labels from logits (n, ..., classes); use the empirical Fisher")
    probs = torch.softmax(logits.double(), dim=-1).reshape(-1, logits.shape[-1])  # (predictions, classes)
    return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])


def _loop_grads(
    model: nn.Module, params: dict[str, torch.Tensor], xs: tuple[torch.Tensor, ...], y: torch.Tensor, loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Per-sample gradients one sample at a time with autograd: exact, for models vmap cannot run."""
    live = dict(model.named_parameters())
    names = list(params)
    out = {n: torch.empty((len(y), *p.shape), dtype=p.dtype) for n, p in params.items()}
    for i in range(len(y)):
        loss = loss_fn(_forward(model, tuple(x[i : i + 1] for x in xs)), y[i : i + 1])
        grads = torch.autograd.grad(loss, [live[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            out[n][i] = 0.0 if g is None else g
    return out


def _split_batch(batch: object) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``(x, y)`` -> (inputs as a tuple, y), checking that every input has y's batch size."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(f"a batch must be an (x, y) pair, got {type(batch).__name__}")
    x, y = batch
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if not isinstance(y, torch.Tensor) or y.ndim == 0 or not all(isinstance(t, torch.Tensor) for t in xs):
        raise ConfigError("a batch must be (x, y) with y a tensor of targets and x a tensor or a tuple of tensors")
    if any(t.ndim == 0 or len(t) != len(y) for t in xs):
        raise ConfigError(f"every input of a batch must have the batch size of y ({len(y)}) along dim 0")
    return xs, y
