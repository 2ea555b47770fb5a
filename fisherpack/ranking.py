"""Global ranking without concatenating or sorting the scores: exact selection by radix histograms.

:func:`keep_top_global` answers what ``torch.sort(cat(scores), stable=True)`` would: prune the
``round(rate * N)`` lowest scores of all tensors together, ties going to the earlier entry (tensors in
the order given, entries in flat order). It never holds more than one tensor's scores, and works in
passes over the tensors (scores are recomputed by the caller's function each pass):

1. Map every float64 score to a 64-bit key with the same order (flip the sign bit of positive
   numbers, all bits of negative ones; ``-0.0`` is made ``+0.0`` first, as the sort treats them
   as equal), and histogram the top 20 bits of the keys: the bin holding the cut is found.
2. While more than 2**22 entries share the cut's bin, histogram the next bits of the entries in
   that bin only (22 bits a pass; at most two such passes pin the exact key).
3. A last pass builds the masks: keys above the cut's bin are kept, below pruned; the entries in
   the bin (at most 2**22 of them, unless they all equal the cut key) are resolved exactly with
   a stable argsort, ties going to the earlier entry, as in the sort.

Work is a few passes of O(N) vectorised numpy; memory is one tensor's keys plus a 2**22-entry
histogram, instead of the concatenated scores and a sort permutation (16+ bytes per entry).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["order_keys", "keep_top_global"]

_TOP_BITS, _NEXT_BITS = 20, 22
_FEW = 1 << 22  # a bin this small is resolved by collecting its entries


def order_keys(scores: torch.Tensor) -> np.ndarray:
    """(n,) uint64 keys of float64 ``scores`` (no NaN) with ``key(a) < key(b)`` iff ``a < b``."""
    s = (scores.detach().double().flatten() + 0.0).numpy()  # a fresh array; + 0.0 turns -0.0 into +0.0
    flip = (s.view(np.int64) >> 63).view(np.uint64)  # all ones for negative numbers, else zero
    flip |= np.uint64(1 << 63)
    keys = s.view(np.uint64)
    keys ^= flip  # in place: no further full-size temporaries
    return keys


def keep_top_global(scores: Callable[[str], torch.Tensor], sizes: dict[str, int], rate: float) -> dict[str, np.ndarray]:
    """(numel,) bool keep-masks per name: the lowest ``round(rate * total)`` scores pruned, ties to
    the earlier entry. ``scores(name)`` returns that tensor's flat float64 scores (called a few
    times per name, so it should compute them rather than hold them)."""
    total = sum(sizes.values())
    n_prune = int(round(rate * total))
    if n_prune == 0:
        return {n: np.ones(size, dtype=bool) for n, size in sizes.items()}
    # Find the prefix of the cut key bit by bit: `prefix` of `bits` bits, `need` entries of it pruned.
    prefix, bits, need = 0, 0, n_prune
    for width in (_TOP_BITS, _NEXT_BITS, 64 - _TOP_BITS - _NEXT_BITS):
        hist = np.zeros(1 << width, dtype=np.int64)
        for name in sizes:
            keys = order_keys(scores(name))
            if bits:
                keys = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
            if bits:
                keys <<= np.uint64(bits)  # in place: keys are fresh for every pass
            keys >>= np.uint64(64 - width)
            _add_counts(hist, keys.view(np.int64))  # below 2**22: the same numbers as int64
        cum = np.cumsum(hist)
        b = int(np.searchsorted(cum, need))  # first bin whose running count reaches `need`
        need -= int(cum[b - 1]) if b else 0
        prefix, bits = (prefix << width) | b, bits + width
        if hist[b] <= _FEW or bits == 64:
            break
    return _masks(scores, sizes, prefix, bits, need)


def _add_counts(hist: np.ndarray, values: np.ndarray) -> None:
    """hist[v] += 1 for each value; a small input does not pay for a histogram-sized bincount."""
    if values.size * 8 >= hist.size:
        hist += np.bincount(values, minlength=hist.size)
    elif values.size:
        unique, counts = np.unique(values, return_counts=True)
        hist[unique] += counts


def _masks(scores, sizes: dict[str, int], prefix: int, bits: int, need: int) -> dict[str, np.ndarray]:
    """Masks given the cut's bin (keys starting with ``prefix`` of ``bits`` bits), ``need`` of whose
    entries are pruned, the lowest first and ties in order."""
    shift, pre = np.uint64(64 - bits), np.uint64(prefix)
    masks, bin_keys, bin_where = {}, [], []
    for name in sizes:
        keys = order_keys(scores(name))
        top = keys >> shift if bits < 64 else keys
        masks[name] = top > pre
        where = np.flatnonzero(top == pre)
        if bits == 64:  # every entry of the bin has the cut key: prune the first `need` in order
            take = min(need, where.size)
            masks[name][where[take:]] = True
            need -= take
        else:
            bin_keys.append(keys[where])
            bin_where.append((name, where))
    if bits < 64 and need:
        order = np.argsort(np.concatenate(bin_keys), kind="stable")  # the bin's few entries, in global order
        keep = np.ones(order.size, dtype=bool)
        keep[order[:need]] = False
        start = 0
        for name, where in bin_where:
            masks[name][where] = keep[start : start + where.size]
            start += where.size
    elif bits < 64:
        for name, where in bin_where:
            masks[name][where] = True
    return masks
