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
  from per-sample gradients (``torch.func.vmap(grad)``, see persample.py), accumulated in float64.
- :func:`sampled` (the "true" Fisher): the same with ``y_n`` drawn from the model's own softmax,
  one draw per sample, with a seeded generator.

- :func:`from_adam_state`: the same as :func:`from_adam`, read from a saved
  ``optimizer.state_dict()`` (e.g. in a checkpoint) instead of a live optimizer.

Both data estimators run the model in eval mode (BatchNorm uses its running statistics) and return
float32 tensors (float64 if the model is float64). ``loss_fn(output, target)`` is the negative
log-likelihood of one sample; it must sum, not average, over anything but the batch of one. The
default, :func:`fisherpack.losses.nll_sum`, takes any output shape: cross-entropy summed over every
position for integer labels (``(N, classes)`` or sequence logits ``(N, T, classes)`` with ``(N, T)``
labels), half the squared error for float targets of the output's shape (regression); other
outputs (several heads, dicts) need their own ``loss_fn``.

Batches are ``(x, y)`` pairs for any model: ``x`` is one tensor (``model(x)``) or a tuple/list of
tensors (``model(*x)``), all with the batch along dim 0; ``y`` is a tensor with the batch along
dim 0 (class indices for the default loss). Keyword inputs need a small adapter module.
Tied parameters appear once, under their first name, as in ``named_parameters()``.

Under torch.distributed (an initialised process group of N ranks; see dist.py) every function
here is a collective: call it on every rank.

- :func:`empirical` / :func:`sampled`: each rank passes its own shard of the samples (disjoint
  shards, e.g. ``dist.shard`` of one global batch); the float64 square sums and the sample counts
  are all-reduced (summed) over ranks before dividing, so every rank returns the same mean over all
  ranks' samples, equal to a one-process run over their union up to float64 summation order.
  (Passing the same samples on every rank is also correct, just N times the work.) ``sampled``
  draws labels with ``seed`` on rank 0 and with a stream derived from (seed, rank) on rank r > 0,
  so ranks do not reuse each other's draws: its estimate agrees with one process in expectation,
  not draw for draw.
- :func:`from_adam` reads the local optimizer: nothing is all-reduced, because there is nothing to
  combine. Under DistributedDataParallel the gradients are averaged over ranks inside backward,
  before Adam sees them, so every rank feeds the same gradient to Adam and holds the same
  ``exp_avg_sq``. With N ranks of local batch B/N the averaged gradient is the mean gradient over
  the global batch of B samples, so ``v`` equals that of a one-process run with batch B (up to
  rounding; tests/test_dist.py checks it in float64) and ``v ~ F_emp / B``, B the *global* batch.
  from_adam checks that the ranks agree (a SHA-256 of ``v`` compared over ranks) and raises
  RanksDisagreeError if not, e.g. when a model was trained without DDP and each rank's Adam only
  saw its own data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from . import dist
from .config import FISHER_SOURCES
from .errors import ConfigError
from .persample import Batches, LossFn, per_sample_square_sum

__all__ = ["estimate", "from_adam", "from_adam_state", "empirical", "sampled"]


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
    if dist.world_size() > 1:
        dist.agree(dist.digest(out), "Adam's exp_avg_sq (train under DistributedDataParallel: fisherpack.dist.wrap)")
    return out


def from_adam_state(state: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """``exp_avg_sq`` for each named parameter from a saved Adam/AdamW ``optimizer.state_dict()``.

    Slots are matched to parameters by **name**, never by position: an optimizer built on
    ``model.named_parameters()`` (torch >= 2.5) records them (``param_names``). A state without
    names is matched by shape, which is only safe where a shape is unique: two trainable
    parameters of equal shape make it a ConfigError naming them (the order of the optimizer's
    parameters, e.g. in groups, cannot be checked). Any mismatch names the first parameter.
    """
    try:
        groups = state["param_groups"]
        ids = [i for group in groups for i in group["params"]]
        slots = state["state"]
        names = [n for group in groups for n in group.get("param_names", ())]
    except (KeyError, TypeError, AttributeError):
        raise ConfigError("the optimizer state is not an optimizer.state_dict()") from None
    params = dict(model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    if names and len(names) == len(ids):
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ConfigError(f"the optimizer state names parameter {unknown[0]!r}, which the model does not have; "
                              "the optimizer state does not belong to this model")  # fmt: skip
        owner = dict(zip(ids, names))
    else:
        owner = _owners_by_shape(ids, slots, trainable)
    out: dict[str, torch.Tensor] = {}
    for i, name in owner.items():
        slot = slots.get(i)
        v = slot.get("exp_avg_sq") if isinstance(slot, dict) else None
        param = params[name]
        if v is None and not param.requires_grad:
            continue  # a frozen parameter has no Adam state, as in from_adam
        if v is None:
            raise ConfigError(f"the optimizer state has no Adam exp_avg_sq for parameter {name!r}; is it Adam/AdamW?")
        if tuple(v.shape) != tuple(param.shape):
            raise ConfigError(
                f"the optimizer state of {name!r} has shape {tuple(v.shape)}, the parameter {tuple(param.shape)}; "
                "the optimizer state does not belong to this model"
            )
        out[name] = v.detach().clone().to(param.dtype)
    missing = [n for n in trainable if n not in out]
    if missing:
        raise ConfigError(f"the optimizer state has no Adam exp_avg_sq for parameter {missing[0]!r}; it must come "
                          "from an Adam/AdamW optimizer over all of the model's trainable parameters")  # fmt: skip
    return out


def _owners_by_shape(ids: list, slots: dict, trainable: dict[str, torch.Tensor]) -> dict:
    """Slot id -> parameter name by unique shapes (a state without ``param_names``)."""
    by_shape: dict[tuple, list[str]] = {}
    for n, p in trainable.items():
        by_shape.setdefault(tuple(p.shape), []).append(n)
    shared = next((ns for ns in by_shape.values() if len(ns) > 1), None)
    if shared is not None:
        raise ConfigError(
            f"the optimizer state does not name its parameters, and {shared[0]!r} and {shared[1]!r} have the same "
            "shape, so which slot is whose cannot be told; build the optimizer on model.named_parameters()"
        )
    owner = {}
    for i in ids:
        slot = slots.get(i)
        v = slot.get("exp_avg_sq") if isinstance(slot, dict) else None
        if not isinstance(v, torch.Tensor):
            continue
        match = by_shape.get(tuple(v.shape))
        if match is None:
            raise ConfigError(f"the optimizer state holds a slot of shape {tuple(v.shape)} that no trainable parameter "
                              "of the model has; the optimizer state does not belong to this model")  # fmt: skip
        owner[i] = match[0]
    return owner


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
    notice: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical Fisher: mean over samples of squared per-sample gradients with the true labels.

    ``n_samples`` caps the samples this process reads (per rank under torch.distributed).
    """
    return _fisher(model, batches, n_samples=n_samples, chunk=chunk, loss_fn=loss_fn, generator=None, notice=notice)


def sampled(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None = None,
    chunk: int = 256,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """True Fisher (Monte Carlo): labels drawn from the model's softmax, one draw per sample."""
    generator = torch.Generator().manual_seed(_rank_seed(seed))
    return _fisher(
        model, batches, n_samples=n_samples, chunk=chunk, loss_fn=loss_fn, generator=generator, notice=notice
    )


def _rank_seed(seed: int) -> int:
    """``seed`` on rank 0 (and on one process); on rank r > 0 a stable hash of (seed, r)."""
    r = dist.rank()
    return seed if r == 0 else int.from_bytes(hashlib.sha256(f"{seed}:rank{r}".encode()).digest()[:8], "little") >> 1


def _fisher(
    model: nn.Module,
    batches: Batches,
    *,
    n_samples: int | None,
    chunk: int,
    loss_fn: LossFn | None,
    generator: torch.Generator | None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
    sums, count = per_sample_square_sum(
        model, batches, n_samples=n_samples, chunk=chunk, loss_fn=loss_fn, generator=generator, notice=notice
    )
    sums, count = dist.all_reduce_sums(sums, count)  # unchanged on one process
    if count == 0:
        raise ConfigError("no samples to estimate the Fisher information from; give a non-empty data set")
    dtype = next(iter(model.parameters())).dtype
    return {name: (s / count).to(dtype) for name, s in sums.items()}


def estimate(
    source: str,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | dict | None = None,
    batches: Batches | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The Fisher information from ``source`` (a config.FisherSource): ``"adam"`` reads it off the
    ``optimizer`` (an Adam/AdamW optimizer, or its saved ``state_dict()``); ``"empirical"`` and
    ``"sampled"`` estimate it from ``batches`` (``seed`` draws the sampled labels)."""
    if source not in FISHER_SOURCES:
        raise ConfigError(f"unknown Fisher estimator {source!r}; choose one of: {', '.join(FISHER_SOURCES)}")
    if source == "adam":
        if optimizer is None:
            raise ConfigError("the adam Fisher is read off the optimizer that trained the model; none was given")
        return from_adam_state(optimizer, model) if isinstance(optimizer, dict) else from_adam(optimizer, model)
    if batches is None:
        raise ConfigError(f"the {source} Fisher is estimated from data; none was given")
    if source == "empirical":
        return empirical(model, batches, n_samples=n_samples, loss_fn=loss_fn, notice=notice)
    return sampled(model, batches, n_samples=n_samples, seed=seed, loss_fn=loss_fn, notice=notice)
