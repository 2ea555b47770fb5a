"""In-memory form of a compressed model: what format.py writes and reads, and compress.py builds.

A :class:`QuantTensor` is a pruned, fixed-point-quantized tensor:

- ``mask``: which entries are kept, flat in row-major (C) order;
- each kept entry belongs to one *group* ``g``; a group has a bit width ``bits[g]`` (1..16), a
  power-of-two step ``2**exps[g]`` and a grid ``grids[g]``;
- each kept entry has an unsigned code ``c`` in ``[0, 2**bits[g])`` that decodes to

  * grid ``"int"`` (mid-tread, has a zero):  ``(c - 2**(b-1)) * 2**e``
  * grid ``"odd"`` (mid-rise, no zero):      ``(2*c + 1 - 2**b) * 2**(e-1)``

Both are exact in float32 for the allowed ranges, so a decoded file equals the quantized weights
bit for bit. :func:`dequantize` is the one place that maps codes to values.

A :class:`RawTensor` is stored losslessly (biases, buffers, anything not compressed). An alias
records a tied parameter stored once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "GRIDS",
    "MAX_BITS",
    "MIN_EXP",
    "MAX_EXP",
    "MAX_GROUPS",
    "QuantTensor",
    "RawTensor",
    "Alias",
    "Compressed",
    "dequantize_codes",
]

GRIDS = ("int", "odd")
MAX_BITS = 16
MIN_EXP, MAX_EXP = -64, 64
MAX_GROUPS = 16


def dequantize_codes(codes: np.ndarray, bits: int, exp: int, grid: str) -> np.ndarray:
    """Map unsigned codes of one group to float32 values (exact; see the module docstring)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}")
    if codes.size >= 1 << max(bits - 2, 0):  # many codes: look each one up in the group's table
        return _levels(bits, exp, grid).take(codes)  # the method: numpy's np.take wrapper costs as much again
    return _dequantize(codes, bits, exp, grid)


def _dequantize(codes: np.ndarray, bits: int, exp: int, grid: str) -> np.ndarray:
    c = codes.astype(np.int64)
    if grid == "int":
        level, scale_exp = c - (1 << (bits - 1)), exp
    else:
        level, scale_exp = 2 * c + 1 - (1 << bits), exp - 1
    # level is an integer with |level| < 2**16 and the scale a power of two: the product is exact.
    return np.ldexp(level.astype(np.float32), np.int32(scale_exp)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _levels(bits: int, exp: int, grid: str) -> np.ndarray:
    """(2**bits,) float32: the value of every code of a group (read-only: it is shared)."""
    table = _dequantize(np.arange(1 << bits), bits, exp, grid)
    table.flags.writeable = False
    return table


@dataclass(frozen=True, eq=False)
class QuantTensor:
    """A pruned and quantized tensor. Arrays are flat; see the module docstring for the math.

    shape:  the tensor's shape
    mask:   (numel,) bool, True where the entry is kept, row-major order
    groups: (kept,) uint8 group id of each kept entry, in row-major order of the kept entries
    codes:  (kept,) uint16 unsigned code of each kept entry, in the same order
    bits, exps, grids: per group width (1..16), step exponent (step = 2**exp), grid ("int"/"odd")
    """

    shape: tuple[int, ...]
    mask: np.ndarray
    groups: np.ndarray
    codes: np.ndarray
    bits: tuple[int, ...]
    exps: tuple[int, ...]
    grids: tuple[str, ...]

    def __post_init__(self) -> None:
        numel = math.prod(self.shape)
        ngroups = len(self.bits)
        if not (1 <= ngroups <= MAX_GROUPS) or len(self.exps) != ngroups or len(self.grids) != ngroups:
            raise ValueError(f"need 1..{MAX_GROUPS} groups with one width, exponent and grid each")
        if self.mask.dtype != np.bool_ or self.mask.shape != (numel,):
            raise ValueError(f"mask must be bool of shape ({numel},), got {self.mask.dtype} {self.mask.shape}")
        kept = int(np.count_nonzero(self.mask))
        if self.groups.shape != (kept,) or self.codes.shape != (kept,):
            raise ValueError(f"groups and codes must have one entry per kept value ({kept})")
        for b, e, g in zip(self.bits, self.exps, self.grids):
            if not (1 <= b <= MAX_BITS) or not (MIN_EXP <= e <= MAX_EXP) or g not in GRIDS:
                raise ValueError(f"bad group: bits={b} exp={e} grid={g!r}")
        if kept and ngroups == 1:
            if int(self.groups.max()) or int(self.codes.max()) >> self.bits[0]:
                raise ValueError("group id out of range, or a code does not fit its group's width")
        elif kept:
            if int(self.groups.max()) >= ngroups:
                raise ValueError("group id out of range")
            limits = np.asarray([1 << b for b in self.bits], dtype=np.int64)[self.groups]
            if np.any(self.codes.astype(np.int64) >= limits):
                raise ValueError("code does not fit its group's width")

    @classmethod
    def checked_elsewhere(cls, shape, mask, groups, codes, bits, exps, grids) -> QuantTensor:
        """A QuantTensor built without ``__post_init__``'s checks, for the decoder, which has checked
        every one of them against the file already (the fuzz suite re-checks what it decodes): on
        a small file those checks cost as much as decoding a tensor's streams."""
        obj = cls.__new__(cls)
        obj.__dict__.update(shape=shape, mask=mask, groups=groups, codes=codes, bits=bits, exps=exps, grids=grids)
        return obj

    @property
    def numel(self) -> int:
        return int(self.mask.size)

    @property
    def kept(self) -> int:
        return int(self.codes.size)

    def group_counts(self) -> np.ndarray:
        """(groups,) int64 number of kept entries in each group."""
        return np.bincount(self.groups, minlength=len(self.bits)).astype(np.int64)

    def values(self) -> np.ndarray:
        """(kept,) float32 decoded values of the kept entries."""
        if len(self.bits) == 1:  # every kept entry is in group 0: no selection to make
            return dequantize_codes(self.codes, self.bits[0], self.exps[0], self.grids[0])
        out = np.zeros(self.kept, dtype=np.float32)
        for g, (b, e, grid) in enumerate(zip(self.bits, self.exps, self.grids)):
            sel = self.groups == g
            out[sel] = dequantize_codes(self.codes[sel], b, e, grid)
        return out

    def dequantize(self) -> torch.Tensor:
        """The dense float32 tensor this encodes; pruned entries are 0."""
        if self.codes.size == self.mask.size:  # nothing pruned: the values are the tensor, a fresh array
            return torch.from_numpy(self.values().reshape(self.shape))
        if self.kept * 1024 < self.numel:  # under one kept entry per 4 KiB page: calloc's untouched zero
            dense = np.zeros(self.numel, dtype=np.float32)  # pages cost address space, not memory
            self._scatter(dense)
        else:  # the scatter would first-touch every page at random, which costs ~2.5x a zero pass at gigabytes
            dense = np.empty(self.numel, dtype=np.float32)
            self.dequantize_into(dense)
        return torch.from_numpy(dense.reshape(self.shape))

    def dequantize_into(self, out: np.ndarray) -> None:
        """Write the dense values into ``out``, a flat float32 array of ``numel`` entries (no copy)."""
        if self.kept != self.numel:  # else _scatter writes every entry: zeros first would be a wasted pass
            out[:] = 0.0
        self._scatter(out)

    def _scatter(self, dense: np.ndarray) -> None:
        if self.kept == self.numel:
            dense[:] = self.values()
        elif 8 * self.kept < self.numel:  # sparse: the positions' int64s take less than the mask
            dense[np.flatnonzero(self.mask)] = self.values()  # about twice as fast as boolean indexing
        else:
            dense[self.mask] = self.values()


@dataclass(frozen=True, eq=False)
class RawTensor:
    """A tensor stored losslessly, any of the dtypes format.py supports."""

    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


@dataclass(frozen=True)
class Alias:
    """A tensor that is the same object as another one (tied weights): stored once, under ``target``."""

    target: str


@dataclass(frozen=True, eq=False)
class Compressed:
    """A whole compressed model: named entries in state_dict order, plus JSON-able metadata."""

    tensors: dict[str, QuantTensor | RawTensor | Alias]
    meta: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Decoded tensors keyed by name; aliases share the tensor of their target."""
        out: dict[str, torch.Tensor] = {}
        for name, entry in self.tensors.items():
            if isinstance(entry, QuantTensor):
                out[name] = entry.dequantize()
            elif isinstance(entry, RawTensor):
                out[name] = entry.tensor
        for name, entry in self.tensors.items():
            if isinstance(entry, Alias):
                out[name] = out[entry.target]
        return {name: out[name] for name in self.tensors}
