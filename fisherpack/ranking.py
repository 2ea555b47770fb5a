"""Global ranking without concatenating or sorting the scores: exact selection by radix histograms.

:func:`keep_top_global` answers what ``torch.sort(cat(scores), stable=True)`` would: prune the
``round(rate * N)`` lowest scores of all tensors together, ties going to the earlier entry (tensors in
the order given, entries in flat order). It never holds more than a chunk of one tensor's scores,
and works in passes over the tensors (scores are recomputed by the caller's function each pass):

1. Map every float64 score to a 64-bit key with the same order (flip the sign bit of positive
   numbers, all bits of negative ones; ``-0.0`` is made ``+0.0`` first, as the sort treats them
   as equal), and histogram the top 20 bits of the keys: the bin holding the cut is found.
2. While more than 2**22 entries share the cut's bin, histogram the next bits of the entries in
   that bin only (22 bits a pass; at most two such passes pin the exact key).
3. A last pass builds the masks: keys above the cut's bin are kept, below pruned; the entries in
   the bin (at most 2**22 of them, unless they all equal the cut key) are resolved exactly with
   a stable argsort, ties going to the earlier entry, as in the sort.

Work is a few passes of O(N) vectorised numpy over chunks of :data:`CHUNK` scores (so the
temporaries stay small and are reused); memory is the masks, a chunk's keys and a 2**22-entry
histogram, instead of the concatenated scores and a sort permutation (16+ bytes per entry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

__all__ = ["CHUNK", "order_keys", "chunks", "keep_top_global"]

_TOP_BITS, _NEXT_BITS = 20, 22
_FEW = 1 << 22  # a bin this small is resolved by collecting its entries
CHUNK = 1 << 20  # scores per chunk: 8 MiB of float64
_SIGN = np.int64(-(1 << 63))

Scores = torch.Tensor | np.ndarray | Iterable[np.ndarray]


def order_keys(scores: torch.Tensor) -> np.ndarray:
    """(n,) uint64 keys of float64 ``scores`` (no NaN) with ``key(a) < key(b)`` iff ``a < b``."""
    return _keys_in_place(scores.detach().double().flatten().numpy().copy())


def _keys_in_place(s: np.ndarray) -> np.ndarray:
    """:func:`order_keys` of the float64 array ``s``, computed in its memory (``s`` is overwritten)."""
    s += 0.0  # turns -0.0 into +0.0
    bits = s.view(np.int64)
    flip = bits >> 63  # all ones for negative numbers, else zero
    flip |= _SIGN
    bits ^= flip
    return s.view(np.uint64)


def chunks(scores: Scores) -> Iterator[np.ndarray]:
    """Writable float64 chunks of ``scores``: a tensor or array is copied a chunk at a time into one
    buffer; an iterable's chunks (already scratch, such as prune's) are passed through."""
    if isinstance(scores, (torch.Tensor, np.ndarray)):
        flat = scores.detach().flatten().double().numpy() if isinstance(scores, torch.Tensor) else scores.ravel()
        buf = np.empty(min(CHUNK, flat.size), dtype=np.float64)
        for start in range(0, flat.size, CHUNK):
            part = buf[: min(CHUNK, flat.size - start)]
            part[:] = flat[start : start + CHUNK]
            yield part
    else:
        yield from scores


def keep_top_global(scores: Callable[[str], Scores], sizes: dict[str, int], rate: float) -> dict[str, np.ndarray]:
    """(numel,) bool keep-masks per name: the lowest ``round(rate * total)`` scores pruned, ties to
    the earlier entry. ``scores(name)`` returns that tensor's flat float64 scores, whole or as an
    iterable of consecutive chunks that the ranking may overwrite (called a few times per name, so
    it should compute them rather than hold them)."""
    total = sum(sizes.values())
    n_prune = int(round(rate * total))
    if n_prune == 0:
        return {n: np.ones(size, dtype=bool) for n, size in sizes.items()}
    # Find the prefix of the cut key bit by bit: `prefix` of `bits` bits, `need` entries of it pruned.
    prefix, bits, need = 0, 0, n_prune
    for width in (_TOP_BITS, _NEXT_BITS, 64 - _TOP_BITS - _NEXT_BITS):
        hist = np.zeros(1 << width, dtype=np.int64)
        for name in sizes:
            for chunk in chunks(scores(name)):
                keys = _keys_in_place(chunk)
                if bits:
                    keys = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                    keys <<= np.uint64(bits)  # in place: a fresh selection
                keys >>= np.uint64(64 - width)
                np.add.at(hist, keys.view(np.int64), 1)  # below 2**22: the same numbers as int64
        cum = np.cumsum(hist)
        b = int(np.searchsorted(cum, need))  # first bin whose running count reaches `need`
        need -= int(cum[b - 1]) if b else 0
        prefix, bits = (prefix << width) | b, bits + width
        if hist[b] <= _FEW or bits == 64:
            break
    return _masks(scores, sizes, prefix, bits, need)


def _masks(scores, sizes: dict[str, int], prefix: int, bits: int, need: int) -> dict[str, np.ndarray]:
    """Masks given the cut's bin (keys starting with ``prefix`` of ``bits`` bits), ``need`` of whose
    entries are pruned, the lowest first and ties in order."""
    shift, pre = np.uint64(64 - bits), np.uint64(prefix)
    masks, bin_keys, bin_where = {}, [], []
    for name, size in sizes.items():
        mask, where, start = np.empty(size, dtype=bool), [], 0
        for chunk in chunks(scores(name)):
            keys = _keys_in_place(chunk)
            top = keys >> shift if bits < 64 else keys
            np.greater(top, pre, out=mask[start : start + keys.size])
            at = np.flatnonzero(top == pre)
            if bits < 64:
                bin_keys.append(keys[at])
            where.append(at + start)
            start += keys.size
        masks[name] = mask
        where = np.concatenate(where) if where else np.zeros(0, dtype=np.int64)
        if bits == 64:  # every entry of the bin has the cut key: prune the first `need` in order
            take = min(need, where.size)
            mask[where[take:]] = True
            need -= take
        else:
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
