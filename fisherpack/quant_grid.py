"""Fixed-point grids for one group of weights: codes, levels, and the step with the least error.

A group at width ``b`` is stored as codes on a power-of-two grid (see fpk/tensors.py): ``"int"``
levels ``q * 2**e``, ``q`` in ``[-2**(b-1), 2**(b-1) - 1]``, or ``"odd"`` levels ``(2k + 1) * 2**(e-1)``
with ``2k + 1`` odd in ``[-(2**b - 1), 2**b - 1]``. :func:`best_step` tries both grids and the
seven steps at and below the smallest that covers ``max |w|``, scoring each by the Fisher-weighted
squared error ``sum_i F_i (w_i - Q(w_i))**2`` (rounding to nearest, half to even on "int";
saturating). :func:`group_error_table` gives the best error at every width, for the bit
allocation. The arithmetic is exact where it can be (scaling by powers of two; integer levels
below 2**16), and the same operations in the same order as fisherpack always did, so results are
bit for bit those of earlier versions (tests/test_fast_paths.py).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError
from .fpk.tensors import MAX_BITS, MAX_EXP, MIN_EXP

__all__ = ["codes_of", "quantize_group", "best_step", "error", "levels", "group_error_table"]

_EXP_CANDIDATES = 6  # how many steps below the smallest step that covers the largest |w| to try


def codes_of(w: np.ndarray, bits: int, exp: int, grid: str) -> np.ndarray:
    scaled = w * 2.0**-exp  # exact: the same number as np.ldexp(w, -exp), several times faster
    if grid == "int":
        half = 1 << (bits - 1)
        return (np.clip(np.rint(scaled), -half, half - 1) + half).astype(np.uint16)
    return np.clip(np.floor(scaled + (1 << (bits - 1))), 0, (1 << bits) - 1).astype(np.uint16)


def quantize_group(w: np.ndarray, weight: np.ndarray | None, bits: int) -> tuple[np.ndarray, int, str, float]:
    """Best codes for one group at ``bits``: returns (codes uint16, exp, grid, weighted error).

    ``w`` and ``weight`` are 1-D float64 arrays of equal length (``weight`` None means all ones).
    """
    if not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bit width must be in 1..{MAX_BITS}, got {bits}")
    w = np.asarray(w, dtype=np.float64)
    max_abs = float(np.abs(w).max()) if w.size else 0.0
    if max_abs == 0.0:
        return np.full(w.size, 1 << (bits - 1), dtype=np.uint16), 0, "int", 0.0
    err, exp, grid = best_step(w, weight, bits, max_abs, np.empty_like(w))
    return codes_of(w, bits, exp, grid), exp, grid, err


def best_step(w: np.ndarray, weight: np.ndarray | None, bits: int, max_abs: float, buf: np.ndarray, cache=None):
    """(weighted error, exp, grid) of the best step for ``w`` (max |w| = ``max_abs`` > 0) at ``bits``;
    ``buf`` is scratch of w's size, ``cache`` a dict for :func:`_scaled` or None. Ties go to the
    first candidate (grid "int" first, lower exp first)."""
    best: tuple[float, int, str] | None = None
    for grid in ("int", "odd"):
        top_level = max((1 << (bits - 1)) - 1, 1) if grid == "int" else ((1 << bits) - 1) / 2
        cover = math.ceil(math.log2(max_abs / top_level))  # smallest exp whose grid reaches max|w|
        for exp in range(cover - _EXP_CANDIDATES, cover + 1):
            exp = min(max(exp, MIN_EXP), MAX_EXP)
            err = error(w, weight, bits, exp, grid, buf, _scaled(w, exp, cache))
            if best is None or err < best[0]:
                best = (err, exp, grid)
    return best


def error(w, weight, bits: int, exp: int, grid: str, buf: np.ndarray, scaled: np.ndarray | None = None) -> float:
    """``sum weight * (w - level(w))**2`` at one width, step and grid, computed in ``buf``."""
    np.subtract(w, levels(w, bits, exp, grid, out=buf, scaled=scaled), out=buf)
    np.square(buf, out=buf)
    if weight is not None:
        buf *= weight
    return float(buf.sum())


def levels(w, bits: int, exp: int, grid: str, out: np.ndarray | None = None, scaled: np.ndarray | None = None):
    """float64 values ``dequantize_codes(codes_of(w, ...))`` without the codes, in ``out`` if given
    (exactly equal: the levels are integers below 2**16 times powers of two; scaling by 2.0**k is
    exact, as ldexp is). ``scaled``, if given, is ``w * 2.0**-exp``, computed before."""
    if grid == "int":
        half = 1 << (bits - 1)
        buf = np.rint(np.multiply(w, 2.0**-exp, out=out) if scaled is None else scaled, out=out)
        np.clip(buf, -half, half - 1, out=buf)
        buf *= 2.0**exp
        return buf
    if scaled is None:
        buf = np.multiply(w, 2.0**-exp, out=out)
        buf += 1 << (bits - 1)
    else:
        buf = np.add(scaled, 1 << (bits - 1), out=out)
    np.clip(np.floor(buf, out=buf), 0, (1 << bits) - 1, out=buf)  # the code c
    buf *= 2.0**exp  # (2c + 1 - 2**bits) * 2**(exp-1), as two exact steps
    buf += (1 - (1 << bits)) * 2.0 ** (exp - 1)
    return buf


_CACHED_SIZE, _CACHED_STEPS = 1 << 17, 16  # group size up to which, and how many, scaled copies are kept


def _scaled(w: np.ndarray, exp: int, cache: dict | None) -> np.ndarray | None:
    """``w * 2.0**-exp`` from ``cache`` (kept for the latest steps: a table tries each step at up to
    seven widths and both grids), or None without a cache."""
    if cache is None:
        return None
    if exp not in cache:
        if len(cache) >= _CACHED_STEPS:
            del cache[next(iter(cache))]  # the oldest: steps only go down as the width grows
        cache[exp] = w * 2.0**-exp
    return cache[exp]


def group_error_table(w: np.ndarray, weight: np.ndarray | None, max_bits: int = MAX_BITS) -> np.ndarray:
    """(max_bits + 1,) best weighted error at each width 1..max_bits (index 0 unused, +inf)."""
    table = np.full(max_bits + 1, np.inf)
    w = np.asarray(w, dtype=np.float64)
    max_abs = float(np.abs(w).max()) if w.size else 0.0
    if max_abs == 0.0:
        table[1:] = 0.0
        return table
    buf = np.empty_like(w)
    cache = {} if w.size <= _CACHED_SIZE else None
    for b in range(1, max_bits + 1):
        table[b] = best_step(w, weight, b, max_abs, buf, cache)[0]
        if table[b] == 0.0:
            table[b + 1 :] = 0.0
            break
    return table
