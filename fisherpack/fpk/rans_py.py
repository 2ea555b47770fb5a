"""rANS coders in pure Python, one symbol at a time (spec: docs/FORMAT.md section 7.2).

- **Version 2** (:func:`encode_v2`, :func:`decode_v2`): 64-bit state, 32-bit words, frequencies
  scaled to 24 bits, starting and ending at state ``2**16``. This is the executable form of the spec: the
  oracle that tests hold the native coder (constriction) to bit for bit, and the fallback when
  constriction is not installed.
- **Version 1** (:func:`decode_v1`, :func:`encode_v1`): 32-bit state in ``[2**16, 2**32)``, 16-bit
  words, starting and ending at ``2**16``. Kept so that files written by fisherpack 0.1 still load.

A table is *sparse*: ``freqs`` are the nonzero frequencies (summing to ``2**precision``) of the
symbols present, in symbol order; coded values are indices into it. The decoders build nothing of
size ``2**precision``: their work is linear in the symbols decoded plus the table's length, which
the table's own bytes bound (issue 16: a file of many tiny streams must not cost a big table each).
"""

from __future__ import annotations

import array
import itertools
from bisect import bisect_right

from ..errors import FormatError

__all__ = ["V2_PRECISION", "V2_START", "encode_v2", "decode_v2", "encode_v1", "decode_v1", "V1_L"]

V2_PRECISION = 24  # frequencies of a table at precision p are scaled by 2**(24 - p)
# Encoding starts at this state and decoding must end at it: a check that catches almost any damage
# (a decoder off track does not return to it). Starting at 0 would save ~2 bytes a stream, but 0 is
# absorbing (a decoder that decays to it stays there), so that check would be weak.
V2_START = 1 << 16
_V2_MASK = (1 << V2_PRECISION) - 1
_WORD = 0xFFFFFFFF
V1_L = 1 << 16


def _starts(freqs: list[int]) -> list[int]:
    return [0, *itertools.accumulate(freqs)][:-1]


def encode_v2(indices: list[int], freqs: list[int], precision: int) -> list[int]:
    """u32 words for ``indices`` (into the sparse table), in file order: the words emitted while
    coding last to first, then the final state's low word and, if nonzero, its high word."""
    f = [v << (V2_PRECISION - precision) for v in freqs]
    start = _starts(f)
    x, words = V2_START, []
    for i in reversed(indices):
        fs = f[i]
        if x >> (64 - V2_PRECISION) >= fs:  # renormalise: keeps the new state below 2**64
            words.append(x & _WORD)
            x >>= 32
        x = ((x // fs) << V2_PRECISION) + x % fs + start[i]
    words.append(x & _WORD)
    if x >> 32:
        words.append(x >> 32)
    return words


def decode_v2(words: list[int], freqs: list[int], precision: int, count: int) -> list[int]:
    """``count`` indices from u32 ``words`` (file order); FormatError unless the stream ends at
    state ``2**16`` with every word read and the last word is nonzero."""
    f = [v << (V2_PRECISION - precision) for v in freqs]
    start = _starts(f)
    stack = list(words)
    if stack and stack[-1] == 0:
        raise FormatError("rANS data is corrupt: it ends in a zero word")
    x = stack.pop() if stack else 0
    if stack:
        x = (x << 32) | stack.pop()
    out = []
    for _ in range(count):
        q = x & _V2_MASK
        i = bisect_right(start, q) - 1
        out.append(i)
        x = f[i] * (x >> V2_PRECISION) + q - start[i]
        if x >> 32 == 0 and stack:
            x = (x << 32) | stack.pop()
    if x != V2_START or stack:
        raise FormatError("rANS data is corrupt: final state check failed")
    return out


def encode_v1(indices: list[int], freqs: list[int], precision: int) -> tuple[int, list[int]]:
    """Version 1: (final u32 state, u16 words in the decoder's read order)."""
    start = _starts(freqs)
    x, words = V1_L, []
    for i in reversed(indices):
        fs = freqs[i]
        if x >= fs << (32 - precision):
            words.append(x & 0xFFFF)
            x >>= 16
        x = ((x // fs) << precision) + x % fs + start[i]
    return x, words[::-1]


def decode_v1(state: int, words: list[int], freqs: list[int], precision: int, count: int) -> array.array:
    """Version 1: ``count`` indices; FormatError unless the stream ends at 2**16 with every word read."""
    if state < V1_L:
        raise FormatError("rANS data is corrupt: initial state below 2**16")
    if len(words) > count:  # each symbol reads at most one word: some could never be read
        raise FormatError("rANS data is corrupt: it has more words than its symbols can read")
    start, mask = _starts(freqs), (1 << precision) - 1
    x, pos, out = state, 0, array.array("H")  # 2 bytes per symbol, not a list of Python ints
    for _ in range(count):
        slot = x & mask
        i = bisect_right(start, slot) - 1
        out.append(i)
        x = freqs[i] * (x >> precision) + slot - start[i]
        if x < V1_L:
            if pos == len(words):
                raise FormatError("rANS data is corrupt: it ends before all symbols are decoded")
            x = (x << 16) | words[pos]
            pos += 1
    if x != V1_L or pos != len(words):
        raise FormatError("rANS data is corrupt: final state check failed")
    return out
