"""Scores -> masks. Criteria, global or per-layer ranking, schedules, and applying masks.

A *score* says how much a weight matters; the lowest scores are pruned first. All quantities are
``dict[str, Tensor]`` keyed by parameter name; a mask is a bool tensor, True where a weight is kept.

Criteria (``F`` is a diagonal Fisher estimate, ``w`` the weight):

- ``magnitude``: ``|w|``.
- ``fisher``: ``F`` (sensitivity of the loss to the weight; the paper's importance).
- ``obd``: ``F * w**2 / 2``, Optimal Brain Damage's second-order estimate of the loss increase
  from setting ``w`` to zero (cost, not sensitivity).
- ``random``: uniform noise from a seeded generator (the baseline every criterion must beat).
- ``two_stage``: the paper's rule: first the smallest magnitudes, then the lowest Fisher. A share
  ``magnitude_share`` of the pruning is done by magnitude, the rest by Fisher among the survivors.

Ranking is ``global`` (one threshold over all pruned tensors) or ``layer`` (every tensor pruned to
the same rate). Weights already pruned stay pruned and count towards the rate. Ties break by
position, so masks are deterministic: the masks of a stable sort of all scores, found by exact
selection (ranking.py) with one tensor's scores in memory at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from . import ranking
from .config import CRITERIA, FISHER_CRITERIA, SCOPES
from .errors import ConfigError

__all__ = ["scores", "masks_for_rate", "select", "schedule", "apply_masks", "sparsity", "value_range"]


Tensors = dict[str, torch.Tensor]


def scores(criterion: str, weights: Tensors, fisher: Tensors | None = None, *, seed: int = 0) -> Tensors:
    """Importance of every weight under a one-stage criterion (not ``two_stage``; see :func:`select`)."""
    if criterion in FISHER_CRITERIA and fisher is None:
        raise ConfigError(f"criterion {criterion!r} needs a Fisher estimate")
    if criterion == "magnitude":
        return {n: w.detach().abs().double() for n, w in weights.items()}
    if criterion == "fisher":
        return {n: _fisher_for(fisher, n, w).double() for n, w in weights.items()}
    if criterion == "obd":
        return {n: 0.5 * _fisher_for(fisher, n, w).double() * w.detach().double() ** 2 for n, w in weights.items()}
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(w.shape, generator=gen, dtype=torch.float64) for n, w in weights.items()}
    raise ConfigError(f"unknown pruning criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")


def _fisher_for(fisher: Tensors, name: str, w: torch.Tensor) -> torch.Tensor:
    if name not in fisher:
        raise ConfigError(f"the Fisher estimate has no entry for {name!r}")
    f = fisher[name].detach()
    if f.shape != w.shape:
        raise ConfigError(f"Fisher for {name!r} has shape {tuple(f.shape)}, weight has {tuple(w.shape)}")
    lo, hi = value_range(f)
    if not -math.inf < lo <= hi < math.inf:
        raise ConfigError(f"the Fisher estimate of {name!r} has NaN or Inf values")
    return f


def value_range(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``t`` in one pass, without the full-size temporaries of ``isfinite(t).all()``;
    both NaN if ``t`` holds a NaN (aminmax propagates it), so ``-inf < lo <= hi < inf`` says
    "finite". An empty tensor gives (0, 0); a bool one its values as 0/1."""
    if not t.numel():
        return 0.0, 0.0
    lo, hi = torch.aminmax(t.detach().to(torch.uint8) if t.dtype == torch.bool else t.detach())
    return float(lo), float(hi)


def masks_for_rate(score: Tensors, rate: float, scope: str = "global", current: Tensors | None = None) -> Tensors:
    """Masks keeping the highest scores so that a fraction ``rate`` of all entries is pruned.

    ``current`` masks are respected: what they prune stays pruned (counted in the rate).
    """
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"pruning rate must be in [0, 1), got {rate}")
    if scope not in SCOPES:
        raise ConfigError(f"unknown ranking scope {scope!r}; choose global or layer")

    def ranked(name: str) -> Iterator[np.ndarray]:  # (numel,) float64 in chunks, computed when needed
        chunks = score.chunks(name) if isinstance(score, _LazyScores) else ranking.chunks(score[name])
        keep = current[name].flatten().numpy() if current is not None and name in current else None
        start = 0
        for x in chunks:
            if keep is not None and not (k := keep[start : start + x.size]).all():
                np.copyto(x, -math.inf, where=~k)
            if x.size and np.isnan(x.max()):  # max propagates NaN: one pass, no temporary
                raise ConfigError(f"scores of {name!r} contain NaN; check the weights and the Fisher estimate")
            start += x.size
            yield x

    shapes = score.shapes if isinstance(score, _LazyScores) else {n: t.shape for n, t in score.items()}
    if scope == "layer":  # each tensor on its own: the same selection, one name at a time
        jobs = [{n: math.prod(shapes[n])} for n in score]
    else:
        jobs = [{n: math.prod(shape) for n, shape in shapes.items()}]
    out = {}
    for sizes in jobs:
        out.update(ranking.keep_top_global(ranked, sizes, rate))
    return {n: torch.from_numpy(k).view(shapes[n]) for n, k in out.items()}


class _LazyScores(Mapping):
    """Scores computed when looked up (one tensor at a time), so ranking never holds them all."""

    def __init__(self, criterion: str, weights: Tensors, fisher: Tensors | None) -> None:
        self.criterion, self.weights, self.fisher = criterion, weights, fisher
        self.shapes = {n: w.shape for n, w in weights.items()}
        for n, w in weights.items():  # check everything before any work
            if criterion != "magnitude":
                _fisher_for(fisher, n, w)

    def __getitem__(self, name: str) -> torch.Tensor:
        return scores(self.criterion, {name: self.weights[name]}, self.fisher)[name]

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        """The float64 scores of ``name``, flat, in consecutive chunks of ranking.CHUNK computed into
        two reused buffers (each chunk is overwritten by the next). Elementwise the same operations
        as :func:`scores`, so the same numbers; the Fisher estimate was checked in ``__init__``."""
        w = self.weights[name].detach().flatten()
        f = None if self.criterion == "magnitude" else self.fisher[name].detach().flatten()
        size = min(ranking.CHUNK, w.numel())
        out, square = np.empty(size), np.empty(size if self.criterion == "obd" else 0)
        for start in range(0, w.numel(), ranking.CHUNK):
            m = min(ranking.CHUNK, w.numel() - start)
            a = torch.from_numpy(out[:m])
            if self.criterion == "magnitude":
                a.copy_(w[start : start + m]).abs_()
            elif self.criterion == "fisher":
                a.copy_(f[start : start + m])
            else:  # obd: 0.5 * F * w**2, in float64 (w**2 is w * w: torch computes the square so)
                a.copy_(f[start : start + m]).mul_(0.5)
                b = torch.from_numpy(square[:m]).copy_(w[start : start + m])
                a.mul_(b.mul_(b))
            yield out[:m]

    def __iter__(self):
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


def _lazy(criterion: str, weights: Tensors, fisher: Tensors | None, seed: int) -> Mapping:
    if criterion in ("magnitude", "fisher", "obd"):
        if criterion != "magnitude" and fisher is None:
            raise ConfigError(f"criterion {criterion!r} needs a Fisher estimate")
        return _LazyScores(criterion, weights, fisher)
    return scores(criterion, weights, fisher, seed=seed)  # random: one generator runs through all tensors


def select(
    criterion: str,
    weights: Tensors,
    fisher: Tensors | None,
    rate: float,
    *,
    scope: str = "global",
    current: Tensors | None = None,
    magnitude_share: float = 0.5,
    seed: int = 0,
) -> Tensors:
    """Masks for one pruning step under ``criterion``, including the paper's two-stage rule."""
    if criterion != "two_stage":
        return masks_for_rate(_lazy(criterion, weights, fisher, seed), rate, scope, current)
    if not 0.0 <= magnitude_share <= 1.0:
        raise ConfigError(f"magnitude_share must be in [0, 1], got {magnitude_share}")
    already = 0.0 if current is None else _pruned_fraction(current)
    first_rate = already + magnitude_share * max(rate - already, 0.0)
    if fisher is None:
        raise ConfigError("criterion 'two_stage' needs a Fisher estimate")
    first = masks_for_rate(_lazy("magnitude", weights, None, seed), first_rate, scope, current)
    return masks_for_rate(_lazy("fisher", weights, fisher, seed), rate, scope, first)


def _pruned_fraction(masks: Tensors) -> float:
    total = sum(m.numel() for m in masks.values())
    return 0.0 if total == 0 else sum(int((~m).sum()) for m in masks.values()) / total


def schedule(final_rate: float, rounds: int) -> list[float]:
    """Pruning rates for ``rounds`` rounds reaching ``final_rate``, pruning the same fraction of
    the surviving weights each round: ``rate_t = 1 - (1 - final_rate) ** (t / rounds)``."""
    if rounds < 1:
        raise ConfigError(f"pruning rounds must be >= 1, got {rounds}")
    if not 0.0 <= final_rate < 1.0:
        raise ConfigError(f"pruning rate must be in [0, 1), got {final_rate}")
    return [1.0 - (1.0 - final_rate) ** (t / rounds) for t in range(1, rounds + 1)]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Tensors) -> None:
    """Zero the pruned entries of the named parameters in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def sparsity(masks: Tensors) -> float:
    """Fraction of entries pruned over all masks."""
    return _pruned_fraction(masks)
