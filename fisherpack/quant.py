"""Fixed-point quantization with per-group widths, and the bit allocations that choose them.

A group of weights ``w`` (with Fisher values ``F``) at width ``b`` is stored as codes on a
power-of-two grid (see tensors.py): ``"int"`` levels ``q * 2**e`` with ``q`` in
``[-2**(b-1), 2**(b-1) - 1]`` (has a zero), or ``"odd"`` levels ``(2k + 1) * 2**(e-1)`` with
``2k + 1`` odd in ``[-(2**b - 1), 2**b - 1]`` (no zero: suits pruned weights, all of which are
away from zero). For each width the grid and exponent are chosen to minimise the Fisher-weighted
squared error ``sum_i F_i (w_i - Q(w_i))**2``, a second-order estimate of the loss increase
(``F`` = 1 gives plain MSE). Rounding is to nearest (half to even on the "int" grid); values
beyond the grid saturate. The per-group arithmetic is in quant_grid.py.

Allocations of widths to groups:

- ``uniform``: one group per tensor, every tensor at ``bits`` (integer) wide. The baseline.
- ``quantile`` (the paper's rule): all kept weights of all tensors ranked by Fisher, split into
  ``len(group_bits)`` equal-count quantiles; the highest-Fisher quantile gets ``group_bits[0]``
  bits, and so on. Each tensor's share of a quantile is its own group with its own step.
- ``waterfill``: each tensor's kept weights split into ``groups`` equal-count Fisher quantiles;
  integer widths chosen greedily (largest error decrease per bit first, with look-ahead over
  non-convex steps) to minimise the total Fisher-weighted error under an average of at most
  ``bits`` bits per kept weight. This is the integer version of reverse water-filling,
  ``b_g = mean + 0.5 * log2(F_g * var_g / geometric mean)``.

The average width counts code bits only; group ids, masks and steps are paid for in the file.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from . import quant_scale
from .config import ALLOCATIONS, CompressConfig
from .errors import ConfigError
from .fpk.tensors import MAX_BITS, MAX_GROUPS, QuantTensor
from .quant_grid import codes_of, group_error_table, quantize_group

__all__ = [
    "quantize_group",
    "group_error_table",
    "allocate_waterfill",
    "quantize",
    "FakeQuant",
    "requantize",
]


def allocate_waterfill(tables: list[np.ndarray], sizes: list[int], target_bits: float, min_bits: int = 1) -> list[int]:
    """Integer widths minimising ``sum_g tables[g][b_g]`` with ``sum_g sizes[g]*b_g <= target*sum(sizes)``.

    Greedy on error decrease per bit, looking ahead to the best slope over any number of extra bits
    so that a flat step in one table does not stall its group.
    """
    total = sum(sizes)
    budget = math.floor(target_bits * total + 1e-9)
    widths = [min_bits] * len(tables)
    used = min_bits * total
    if used > budget:
        raise ConfigError(f"average of {target_bits} bits is below the minimum width {min_bits}")
    max_bits = len(tables[0]) - 1 if tables else MAX_BITS

    def best_step(g: int) -> tuple[float, int] | None:
        b, best = widths[g], None
        for k in range(1, max_bits - b + 1):
            slope = (tables[g][b] - tables[g][b + k]) / (k * sizes[g])
            if best is None or slope > best[0]:
                best = (slope, k)
        return best if best and best[0] > 0 else None

    heap = []
    for g in range(len(tables)):
        if sizes[g] and (step := best_step(g)):
            heap.append((-step[0], g, step[1]))
    heapq.heapify(heap)
    while heap:
        _, g, k = heapq.heappop(heap)
        while k and used + k * sizes[g] > budget:
            k -= 1  # cannot afford the whole jump: take what fits
        if not k:
            continue
        widths[g] += k
        used += k * sizes[g]
        if step := best_step(g):
            heapq.heappush(heap, (-step[0], g, step[1]))
    return widths


def _split_by_fisher(f: np.ndarray, n_groups: int) -> np.ndarray:
    """(n,) uint8 group ids: equal-count Fisher quantiles, group 0 the highest Fisher. The entry of
    rank ``r`` (Fisher descending, ties by position) goes to group ``r * n_groups // n``; found by
    selection (np.partition) and counting, not by sorting (see quant_scale.split_ranks)."""
    return quant_scale.split_ranks(-f, n_groups)


def quantize(
    weights: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor] | None,
    *,
    allocation: str = CompressConfig.allocation,
    bits: float = CompressConfig.bits,
    groups: int = CompressConfig.groups,
    group_bits: tuple[int, ...] = CompressConfig.group_bits,
    widths: dict[str, int] | None = None,
) -> dict[str, QuantTensor]:
    """Quantize the kept entries of every weight tensor; returns a QuantTensor per name.

    ``widths`` fixes the width of the tensors it names (one group each, outside the allocation:
    the ``bits`` budget and the quantiles cover only the other tensors). Steps are chosen by the
    Fisher-weighted error as for the other tensors of the allocation.
    """
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"unknown bit allocation {allocation!r}; choose one of: {', '.join(ALLOCATIONS)}")
    fixed = dict(widths or {})
    for name, b in fixed.items():
        if name not in weights or not 1 <= b <= MAX_BITS or b != int(b):
            raise ConfigError(f"fixed width for {name!r} must be a whole number in 1..{MAX_BITS}, got {b}")
    free = [n for n in weights if n not in fixed]
    if allocation != "uniform" and fisher is None and free:
        raise ConfigError(f"bit allocation {allocation!r} needs a Fisher estimate; use uniform without one")
    kept_w, kept_f = {}, {}
    for name, w in weights.items():  # kept entries only, float32 (exact); float64 one group at a time
        mask = masks[name].flatten().numpy()
        kept_w[name] = quant_scale.kept(w, mask)
        kept_f[name] = None if fisher is None else quant_scale.kept(fisher[name], mask)
        if kept_w[name].size and not (np.isfinite(kept_w[name].min()) and np.isfinite(kept_w[name].max())):
            raise ConfigError(f"weight {name!r} has NaN or Inf values; fix the model before compressing")

    gids = _assign_groups(
        {n: kept_w[n] for n in free}, {n: kept_f[n] for n in free}, allocation, bits, groups, group_bits
    )
    gids.update({n: np.zeros(kept_w[n].size, dtype=np.uint8) for n in fixed})
    slots = [(n, g) for n in free for g in range(int(gids[n].max()) + 1 if gids[n].size else 0)]
    sample = quant_scale.sample_size(len(slots) + len(fixed))
    if allocation == "uniform":
        chosen = [int(bits)] * len(slots)
    elif allocation == "quantile":
        chosen = [group_bits[g] for _, g in slots]
    else:
        sizes = [int(np.count_nonzero(gids[n] == g)) for n, g in slots]
        tables = [
            quant_scale.error_table(group_error_table, kept_w[n], kept_f[n], gids[n] == g, sample) for n, g in slots
        ]
        chosen = allocate_waterfill(tables, sizes, bits)
    width_of = dict(zip(slots, chosen))
    width_of.update({(n, 0): int(b) for n, b in fixed.items()})

    out = {}
    for name, w in weights.items():
        gid, n_groups = _compact(gids[name], name, width_of)
        codes = np.zeros(gid.size, dtype=np.uint16)
        bits_l, exps, grids = [], [], []
        for g, (_, b) in enumerate(n_groups):
            sel = gid == g
            f = None if kept_f[name] is None or allocation == "uniform" else kept_f[name][sel]
            c, e, grid = quant_scale.quantize_large(quantize_group, codes_of, kept_w[name][sel], f, b, sample)
            codes[sel] = c
            bits_l.append(b), exps.append(e), grids.append(grid)
        mask = masks[name].flatten().numpy().astype(bool, copy=False)  # a view of the bool mask, not a copy
        out[name] = QuantTensor(tuple(w.shape), mask, gid, codes, tuple(bits_l), tuple(exps), tuple(grids))
    return out


def _assign_groups(kept_w, kept_f, allocation, bits, groups, group_bits) -> dict[str, np.ndarray]:
    if allocation == "uniform":
        if bits != int(bits) or not 1 <= bits <= MAX_BITS:
            raise ConfigError(f"uniform quantization needs a whole bit width in 1..{MAX_BITS}, got {bits}")
        return {n: np.zeros(w.size, dtype=np.uint8) for n, w in kept_w.items()}
    if allocation == "quantile":
        if not 1 <= len(group_bits) <= MAX_GROUPS or any(not 1 <= b <= MAX_BITS for b in group_bits):
            raise ConfigError(f"group_bits needs 1..{MAX_GROUPS} widths in 1..{MAX_BITS}, got {group_bits}")
        names = list(kept_f)
        allf = np.concatenate([kept_f[n] for n in names]) if names else np.zeros(0)
        gid_all = _split_by_fisher(allf, len(group_bits))
        out, start = {}, 0
        for n in names:
            out[n] = gid_all[start : start + kept_f[n].size]
            start += kept_f[n].size
        return out
    if not 1 <= groups <= MAX_GROUPS:
        raise ConfigError(f"groups must be in 1..{MAX_GROUPS}, got {groups}")
    if not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"average bits must be in 1..{MAX_BITS}, got {bits}")
    return {n: _split_by_fisher(f, min(groups, max(f.size, 1))) for n, f in kept_f.items()}


def _compact(gid: np.ndarray, name: str, width_of: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Drop empty groups and merge groups of equal width (one step per width is enough)."""
    present = sorted(set(np.unique(gid).tolist())) or [0]
    by_width: dict[int, int] = {}
    remap = np.zeros(max(present) + 1, dtype=np.uint8)
    kept_groups: list[tuple[int, int]] = []
    for g in present:
        b = width_of.get((name, g), 1)
        if b not in by_width:
            by_width[b] = len(kept_groups)
            kept_groups.append((g, b))
        remap[g] = by_width[b]
    return remap[gid] if gid.size else gid, kept_groups


class FakeQuant:
    """Straight-through fake quantization of one weight tensor with a frozen QuantTensor layout.

    The forward value is what :func:`requantize` would store (same mask, groups, widths, steps and
    grids; only the codes follow the weight); the backward pass is the identity on kept entries
    (straight-through estimator) and zero on pruned ones. Per entry, with step ``d = 2**e``:
    ``"int"``: ``clamp(round(w / d), lo, hi) * d``; ``"odd"``: ``(clamp(floor(w / d), lo, hi) + 0.5) * d``,
    ``lo = -2**(b-1)``, ``hi = 2**(b-1) - 1``: the same values as tensors.dequantize_codes.
    """

    def __init__(self, qt: QuantTensor) -> None:
        gid = torch.from_numpy(qt.groups.astype(np.int64))
        bits = torch.tensor(qt.bits, dtype=torch.float32)[gid]
        exps = torch.tensor(qt.exps, dtype=torch.float32)[gid]
        odd = torch.tensor([g == "odd" for g in qt.grids])[gid]
        self.mask = torch.from_numpy(qt.mask.copy()).view(qt.shape)  # (*shape) bool
        self.shape = qt.shape

        def dense(kept_values: torch.Tensor, fill: float) -> torch.Tensor:
            out = torch.full((qt.numel,), fill, dtype=kept_values.dtype)
            out[self.mask.flatten()] = kept_values
            return out.view(qt.shape)

        self.step = dense(torch.exp2(exps), 1.0)
        self.lo = dense(-torch.exp2(bits - 1), 0.0)
        self.hi = dense(torch.exp2(bits - 1) - 1, 0.0)
        self.odd = dense(odd, False)

    def values(self, w: torch.Tensor) -> torch.Tensor:
        scaled = w.detach() / self.step  # exact: power-of-two steps
        level = torch.where(self.odd, torch.floor(scaled), torch.round(scaled))
        level = torch.minimum(torch.maximum(level, self.lo), self.hi)
        return torch.where(self.mask, (level + self.odd.to(w.dtype) * 0.5) * self.step, torch.zeros_like(w))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask + (self.values(w) - w * self.mask).detach()


def requantize(qt: QuantTensor, weight: torch.Tensor) -> QuantTensor:
    """The same layout as ``qt`` (mask, groups, widths, steps, grids) with codes for ``weight``."""
    kept = weight.detach().flatten().double().numpy()[qt.mask]
    if not np.isfinite(kept).all():
        raise ConfigError("weights became NaN or Inf during quantization-aware fine-tuning; lower its learning rate")
    codes = np.zeros(qt.kept, dtype=np.uint16)
    for g, (b, e, grid) in enumerate(zip(qt.bits, qt.exps, qt.grids)):
        sel = qt.groups == g
        codes[sel] = codes_of(kept[sel], b, e, grid)
    return QuantTensor(qt.shape, qt.mask, qt.groups, codes, qt.bits, qt.exps, qt.grids)
