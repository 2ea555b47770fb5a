"""The parts of quantization whose cost grows with the model, kept linear in time and small in memory.

- :func:`kept`: a tensor's kept entries as float32 (exact for float32 weights and Fisher), not a
  float64 copy of the whole tensor;
- :func:`split_ranks`: equal-count groups by rank, found by selection instead of a sort;
- :func:`error_table` and :func:`quantize_large`: a group of more than ``sample`` kept weights
  chooses its width (the waterfill tables), step and grid on an evenly strided sample of
  ``sample`` of them plus its largest magnitude, then codes all of them at that choice. Both
  are heuristics on the exact Fisher-weighted error of the sample, scaled to the group.
  :func:`sample_size`: the model shares a budget of :data:`BUDGET` sampled weights equally among
  its groups, at least :data:`MIN_SAMPLE` each, so the cost of choosing widths stays bounded
  however many layers there are; groups within their share (every group of the LeNets, whose
  few groups get shares of a million weights) are computed on all entries, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["BUDGET", "MIN_SAMPLE", "sample_size", "kept", "split_ranks", "error_table", "quantize_large"]

BUDGET, MIN_SAMPLE = 1 << 23, 1 << 16


def sample_size(groups: int) -> int:
    """Entries a group may use to choose its width, step and grid, when a model has ``groups``."""
    return max(MIN_SAMPLE, BUDGET // max(groups, 1))


def kept(t: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """(kept,) float32 entries of ``t`` where the flat ``mask`` is True."""
    return t.detach().float().flatten().numpy()[mask]


def split_ranks(key: np.ndarray, n_groups: int) -> np.ndarray:
    """(n,) uint8: the entry of rank ``r`` in ascending ``key`` order (ties by position) gets group
    ``r * n_groups // n``. Equal to assigning groups along a stable argsort, in O(n) per boundary."""
    n = key.size
    gid = np.zeros(n, dtype=np.uint8)
    ranks = [math.ceil(g * n / n_groups) for g in range(1, n_groups)]  # first rank of group g
    ranks = [r for r in ranks if r < n]
    if not ranks:
        return gid
    cuts = np.partition(key, ranks)[ranks]  # the key at each boundary rank
    for r, t in zip(ranks, cuts):
        below = int(np.count_nonzero(key < t))
        tie = key == t
        # among entries equal to t, those from position (r - below) on in order have rank >= r
        tie_rank = np.cumsum(tie) - 1
        gid += (key > t) | (tie & (tie_rank >= r - below))
    return gid


def _sample(w: np.ndarray, f: np.ndarray | None, sample: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(w, f, scale): every ``stride``-th entry and the largest |w|; scale = entries per sampled one."""
    stride = math.ceil(w.size / sample)
    top = int(np.argmax(np.abs(w)))
    ws = np.append(w[::stride], w[top])
    fs = None if f is None else np.append(f[::stride], f[top])
    return ws, fs, w.size / ws.size


def error_table(table_fn: Callable, w: np.ndarray, f: np.ndarray, sel: np.ndarray, sample: int) -> np.ndarray:
    """``table_fn`` (quant_grid.group_error_table) of the group ``sel`` of ``w``/``f``, on a sample if large."""
    wg, fg = w[sel], f[sel]
    if wg.size <= sample:
        return table_fn(wg, fg)
    ws, fs, scale = _sample(wg, fg, sample)
    return table_fn(ws, fs) * scale


def quantize_large(group_fn: Callable, codes_fn: Callable, w: np.ndarray, f: np.ndarray | None, bits: int, sample: int):
    """(codes, exp, grid) of one group: ``group_fn`` (quant_grid.quantize_group) directly, or for a large
    group its step and grid chosen on a sample and ``codes_fn`` (quant_grid.codes_of) applied to all."""
    if w.size <= sample:
        codes, exp, grid, _ = group_fn(w, f, bits)
        return codes, exp, grid
    ws, fs, _ = _sample(w, f, sample)
    _, exp, grid, _ = group_fn(ws, fs, bits)
    return codes_fn(w.astype(np.float64), bits, exp, grid), exp, grid
