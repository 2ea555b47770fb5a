"""Frozen, validated, versioned configuration; stored in every output file as JSON.

:class:`CompressConfig` says how to compress trained weights (the one verb, compress.py).
:class:`PipelineConfig` says how ``fisherpack reproduce`` trains, prunes and fine-tunes around it.
Both validate in ``__post_init__`` and round-trip through ``to_dict`` / ``from_dict``; unknown keys
and versions are refused, so a file's config always means what it says.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import ConfigError
from .fpk.tensors import MAX_BITS, MAX_GROUPS

__all__ = [
    "CompressConfig",
    "PipelineConfig",
    "Criterion",
    "Scope",
    "Allocation",
    "FisherSource",
    "CRITERIA",
    "SCOPES",
    "ALLOCATIONS",
    "FISHER_SOURCES",
    "FISHER_CRITERIA",
    "OVERRIDE_KEYS",
]


class Criterion(StrEnum):
    """What ranks a weight for pruning (prune.py): Fisher, Fisher x w^2 / 2 (OBD), |w|, chance, or
    the paper's two-stage rule."""

    FISHER = "fisher"
    OBD = "obd"
    MAGNITUDE = "magnitude"
    RANDOM = "random"
    TWO_STAGE = "two_stage"


class Scope(StrEnum):
    """Where weights are ranked against each other: across all layers, or within each layer."""

    GLOBAL = "global"
    LAYER = "layer"


class Allocation(StrEnum):
    """How code widths are given to Fisher groups (quant.py)."""

    WATERFILL = "waterfill"
    QUANTILE = "quantile"
    UNIFORM = "uniform"


class FisherSource(StrEnum):
    """Where the Fisher information comes from (fisher.py)."""

    ADAM = "adam"
    EMPIRICAL = "empirical"
    SAMPLED = "sampled"


# the same choices as plain strings, for argument parsers and messages
CRITERIA = tuple(c.value for c in Criterion)
SCOPES = tuple(s.value for s in Scope)
ALLOCATIONS = tuple(a.value for a in Allocation)
FISHER_SOURCES = tuple(f.value for f in FisherSource)
# the criteria that rank weights by their Fisher information (magnitude and random need none)
FISHER_CRITERIA = (Criterion.FISHER.value, Criterion.OBD.value, Criterion.TWO_STAGE.value)
OVERRIDE_KEYS = ("rate", "bits")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is(value: Any, kind: str) -> bool:
    return isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))


def _choice(value: str, options: tuple[str, ...], what: str) -> None:
    _check(value in options, f"unknown {what} {value!r}; choose one of: {', '.join(options)}")


_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,)}
_TYPE_NAMES = {"float": "a number", "int": "a whole number", "str": "a string", "bool": "true or false"}
_PLURALS = {"float": "numbers", "int": "whole numbers", "str": "strings", "bool": "booleans"}


class _Versioned:
    VERSION = 1

    def _check_types(self) -> None:
        """Every field of a plain type (``float``, ``int``, ``str``, ``bool``, ``tuple[X, ...]``) holds
        one; lists become tuples. Runs first, so the range checks never meet a wrong type."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)  # a string: annotations are postponed
            if kind.startswith("tuple[") and kind.endswith(", ...]"):
                if isinstance(value, list):
                    object.__setattr__(self, f.name, value := tuple(value))
                inner = kind[len("tuple[") : -len(", ...]")]
                ok = isinstance(value, tuple) and (inner not in _TYPES or all(_is(v, inner) for v in value))
                what = _PLURALS.get(inner, inner)
                _check(ok, f"{type(self).__name__}.{f.name} must be a list of {what}, got {value!r}")
            elif kind in _TYPES:
                _check(_is(value, kind), f"{type(self).__name__}.{f.name} must be {_TYPE_NAMES[kind]}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        _check(not unknown, f"{cls.__name__} has unknown keys: {', '.join(unknown)}")
        _check(
            d.get("version", cls.VERSION) == cls.VERSION, f"{cls.__name__} version {d.get('version')} is not supported"
        )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad {cls.__name__}: {exc}") from None

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CompressConfig(_Versioned):
    """How to prune and quantize.

    rate: fraction of the compressed tensors' entries to prune (0 = quantize only).
    criterion / scope / magnitude_share: see prune.py. seed: for the random criterion.
    allocation / bits / groups / group_bits: see quant.py.
    include / exclude: fnmatch patterns on parameter names; by default the weights of Linear,
        Conv and Embedding layers are compressed and everything else is stored losslessly.
    overrides: per-layer settings, ``((pattern, {"rate": r, "bits": b}), ...)`` with either key or
        both. A compressed tensor whose name matches ``pattern`` (fnmatch) is pruned on its own to
        ``rate`` (instead of sharing ``rate`` with the rest) and/or quantized with exactly ``bits``
        (a whole number, one width for all its kept weights) outside the ``allocation`` budget.
        Each key comes from the first rule that matches and sets it; a pattern that matches no
        compressed tensor is an error (see compress.py). In JSON: ``[[pattern, {...}], ...]``.
    quantize_biases: also quantize (never prune) the bias beside each compressed weight, with
        widths from the same allocation; off by default (biases stored losslessly).
    entropy: allow the rANS entropy-coding stage where it makes a stream smaller.
    """

    rate: float = 0.0
    criterion: str = "obd"
    scope: str = "global"
    magnitude_share: float = 0.5
    allocation: str = "waterfill"
    bits: float = 5.0
    groups: int = 1
    group_bits: tuple[int, ...] = (6, 4, 2)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[tuple[str, dict[str, float]], ...] = ()
    quantize_biases: bool = False
    entropy: bool = True
    seed: int = 0
    version: int = 1

    def ranks_by_fisher(self) -> bool:
        """Whether its pruning criterion ranks weights by their Fisher information."""
        return self.criterion in FISHER_CRITERIA

    def needs_fisher(self, masks_given: bool = False) -> bool:
        """Whether compressing with this config needs a Fisher: to prune by a Fisher criterion (at
        ``rate`` or an override's rate, unless the masks are given), or to give code widths by the
        Fisher (every allocation but uniform)."""
        prunes = not masks_given and (self.rate > 0 or any("rate" in s for _, s in self.overrides))
        return (prunes and self.ranks_by_fisher()) or self.allocation != Allocation.UNIFORM

    def __post_init__(self) -> None:
        self._check_types()
        _check(
            isinstance(self.rate, (int, float)) and 0.0 <= self.rate < 1.0, f"rate must be in [0, 1), got {self.rate}"
        )
        _choice(self.criterion, CRITERIA, "pruning criterion")
        _choice(self.scope, SCOPES, "ranking scope")
        _check(0.0 <= self.magnitude_share <= 1.0, f"magnitude_share must be in [0, 1], got {self.magnitude_share}")
        _choice(self.allocation, ALLOCATIONS, "bit allocation")
        _check(
            isinstance(self.bits, (int, float)) and math.isfinite(self.bits) and 1 <= self.bits <= MAX_BITS,
            f"bits must be in 1..{MAX_BITS}, got {self.bits}",
        )
        _check(
            self.allocation != "uniform" or float(self.bits).is_integer(), f"uniform needs whole bits, got {self.bits}"
        )
        _check(
            isinstance(self.groups, int) and 1 <= self.groups <= MAX_GROUPS,
            f"groups must be in 1..{MAX_GROUPS}, got {self.groups}",
        )
        _check(
            1 <= len(self.group_bits) <= MAX_GROUPS
            and all(isinstance(b, int) and 1 <= b <= MAX_BITS for b in self.group_bits),
            f"group_bits needs 1..{MAX_GROUPS} whole widths in 1..{MAX_BITS}, got {self.group_bits}",
        )
        object.__setattr__(self, "overrides", _overrides(self.overrides))
        _check(self.version == self.VERSION, f"CompressConfig version {self.version} is not supported")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["overrides"] = [[pattern, dict(settings)] for pattern, settings in self.overrides]
        return d

    def layer_settings(self, names: list[str]) -> dict[str, dict[str, float]]:
        """The override settings of each name in ``names`` (empty dicts omitted); ConfigError if a
        pattern matches none of them, since a typo would otherwise be silently ignored."""
        out: dict[str, dict[str, float]] = {}
        for pattern, settings in self.overrides:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            _check(bool(hits), f"override pattern {pattern!r} matches no compressed tensor; check the name")
            for n in hits:
                for key, value in settings.items():
                    out.setdefault(n, {}).setdefault(key, value)
        return out


def _overrides(value: Any) -> tuple[tuple[str, dict[str, float]], ...]:
    """Validate per-layer overrides and normalise them to ``((pattern, {key: value}), ...)``."""
    what = 'overrides must be a list of [pattern, {"rate": r, "bits": b}] pairs'
    _check(isinstance(value, (tuple, list)), what)
    out = []
    for item in value:
        _check(isinstance(item, (tuple, list)) and len(item) == 2, what)
        pattern, settings = item
        _check(isinstance(pattern, str) and pattern != "", f"{what}; got pattern {pattern!r}")
        _check(isinstance(settings, dict) and settings != {}, f"{what}; got settings {settings!r} for {pattern!r}")
        unknown = sorted(set(settings) - set(OVERRIDE_KEYS))
        _check(not unknown, f"override {pattern!r} has unknown keys: {', '.join(map(str, unknown))} (use rate, bits)")
        clean: dict[str, float] = {}
        if "rate" in settings:
            r = settings["rate"]
            ok = isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 <= r < 1.0
            _check(ok, f"override {pattern!r}: rate must be in [0, 1), got {r!r}")
            clean["rate"] = float(r)
        if "bits" in settings:
            b = settings["bits"]
            ok = isinstance(b, (int, float)) and not isinstance(b, bool) and float(b).is_integer()
            _check(ok and 1 <= b <= MAX_BITS, f"override {pattern!r}: bits must be a whole number in 1..{MAX_BITS}")
            clean["bits"] = int(b)
        out.append((pattern, clean))
    return tuple(out)


@dataclass(frozen=True)
class PipelineConfig(_Versioned):
    """How ``reproduce`` trains and fine-tunes: ``epochs`` of Adam at ``lr`` (cosine-decayed per
    epoch with ``lr_schedule="cosine"``), then ``rounds`` of estimate Fisher -> prune ->
    fine-tune ``finetune_epochs`` at ``finetune_lr`` following prune.schedule, then
    ``final_epochs`` of masked fine-tuning (cosine from ``finetune_lr``), then quantization, then
    ``qat_epochs`` of quantization-aware fine-tuning (straight-through estimator, widths and steps
    frozen, cosine from ``qat_lr``). With ``distill`` > 0 every step after training learns from
    the trained dense model's soft targets as well (knowledge distillation, see train.py).
    ``augment`` = k shifts training images by up to k pixels (0 = off). ``structured`` > 0 also
    removes whole output neurons and filters (see structured.py) in the same rounds, until that
    fraction of the weights in removable channels is gone, never leaving a layer fewer than
    ``structured_min`` channels; ``compress.rate`` still counts the weights pruned of the original
    model."""

    model: str = "lenet5"
    seed: int = 0
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    rounds: int = 6
    finetune_epochs: float = 1.0
    finetune_lr: float = 1e-3
    final_epochs: int = 0
    qat_epochs: int = 0
    qat_lr: float = 1e-4
    distill: float = 0.0
    augment: int = 0
    lr_schedule: str = "cosine"
    fisher: str = "adam"
    fisher_samples: int = 1000
    compress: CompressConfig = field(default_factory=CompressConfig)
    version: int = 1
    structured: float = 0.0
    structured_min: int = 1

    # Fields added after version 1, written only when set: a record made before a field existed
    # keeps its identity (sweep keys, a file's recorded config) and still means the same.
    _LATER = {"structured": 0.0, "structured_min": 1}

    def __post_init__(self) -> None:
        self._check_types()
        _check(
            self.epochs >= 0 and isinstance(self.epochs, int), f"epochs must be a whole number >= 0, got {self.epochs}"
        )
        _check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0 and self.finetune_lr > 0, "learning rates must be > 0")
        _check(isinstance(self.rounds, int) and self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        _check(self.finetune_epochs >= 0, f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        _check(
            isinstance(self.final_epochs, int) and self.final_epochs >= 0, "final_epochs must be a whole number >= 0"
        )
        _check(isinstance(self.qat_epochs, int) and self.qat_epochs >= 0, "qat_epochs must be a whole number >= 0")
        _check(self.qat_lr > 0, "qat_lr must be > 0")
        _check(0.0 <= self.distill <= 1.0, f"distill must be in [0, 1], got {self.distill}")
        _check(
            isinstance(self.augment, int) and 0 <= self.augment <= 8, f"augment must be 0..8 pixels, got {self.augment}"
        )
        _choice(self.lr_schedule, ("cosine", "constant"), "learning-rate schedule")
        _choice(self.fisher, FISHER_SOURCES, "Fisher estimator")
        _check(self.fisher_samples >= 1, f"fisher_samples must be >= 1, got {self.fisher_samples}")
        _check(0.0 <= self.structured < 1.0, f"structured must be in [0, 1), got {self.structured}")
        _check(
            isinstance(self.structured_min, int) and self.structured_min >= 1,
            f"structured_min must be a whole number of channels >= 1, got {self.structured_min}",
        )
        _check(self.structured_min == 1 or self.structured > 0, "structured_min needs structured > 0 (it limits it)")
        if isinstance(self.compress, dict):
            object.__setattr__(self, "compress", CompressConfig.from_dict(self.compress))
        _check(isinstance(self.compress, CompressConfig), f"compress must be a CompressConfig, got {self.compress!r}")
        _check(self.version == self.VERSION, f"PipelineConfig version {self.version} is not supported")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["compress"] = self.compress.to_dict()
        return {k: v for k, v in d.items() if k not in self._LATER or v != self._LATER[k]}
