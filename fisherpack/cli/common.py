"""Pieces every fisherpack subcommand shares: the one-line-error parser, the progress bar, logging."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import dist
from ..errors import ConfigError

__all__ = ["Parser", "Bar", "log", "on_rank0", "table", "out_path", "add_force_flag", "RANGES", "check_ranges"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Bar:
    """pipeline.Progress on a tqdm bar (images/s and ETA) on stderr."""

    def __init__(self, enabled: bool, unit: str = "img") -> None:
        self.enabled, self.unit, self.bar = enabled, unit, None

    def start(self, total: int, done: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            scale = self.unit == "img"
            self.bar = tqdm(
                total=total, initial=done, unit=self.unit, unit_scale=scale, dynamic_ncols=True, file=sys.stderr
            )

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(message: str) -> None:
    if dist.rank() == 0:
        print(message, file=sys.stderr)


def on_rank0(what: str, *actions: Callable[[], object]) -> None:
    """File actions on rank 0 only (no shared disk is assumed); every rank learns if they failed."""

    def run() -> None:
        for action in actions:
            action()

    dist.from_rank0(run, what)


def given(args: argparse.Namespace, *names: str) -> dict:
    """The flags among ``names`` that the user gave (flags default to None), to pass to a config:
    what the user leaves out takes the config's own default, so each default has one home."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON of figures, keys sorted: a non-finite number (a diverged loss) is null, never
    the bare NaN or Infinity that JSON parsers other than Python's refuse."""
    return json.dumps(_finite(obj), indent=indent, sort_keys=True, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def out_path(value: str | None, default: str | Path, flag: str = "--out") -> Path:
    """The output named by ``flag``, or ``default`` when the flag was not given; an empty name is an error."""
    if value == "":
        raise ConfigError(f"{flag} is empty; give a file name")
    return Path(default if value is None else value)


def add_force_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace a read-only output file or a symlink named as output")


# PipelineConfig fields that reproduce's flags of the same name set (train and compress take some)
PIPELINE_FLAGS = ("seed", "epochs", "rounds", "finetune_epochs", "fisher", "augment", "distill", "structured",
                  "structured_min", "final_epochs", "qat_epochs", "batch_size", "lr", "finetune_lr",
                  "qat_lr")  # fmt: skip


def pipeline_changes(args: argparse.Namespace, keys: tuple[str, ...] = PIPELINE_FLAGS) -> dict[str, Any]:
    """The PipelineConfig fields the command line gave (flags left out are None)."""
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


# Numeric flags: (smallest, largest) allowed, checked before any work. Bounds far beyond any sensible
# run keep absurd values from reaching torch, numpy or a plan built in memory as tracebacks.
RANGES: dict[str, tuple[float, float]] = {
    "threads": (1, 1024), "timeout": (0.001, 1e7), "seed": (0, 2**32 - 1), "epochs": (0, 10_000),
    "rounds": (1, 1000), "finetune_epochs": (0, 10_000), "augment": (0, 8), "distill": (0, 1), "structured": (0, 0.99),
    "structured_min": (1, 10**6),
    "max_elements": (1, 2**34), "fisher_samples": (1, 10**7), "val": (1, 10**7), "final_epochs": (0, 10_000),
    "qat_epochs": (0, 10_000), "batch_size": (1, 10**6), "lr": (1e-9, 10), "finetune_lr": (1e-9, 10),
    "qat_lr": (1e-9, 10),
}  # fmt: skip


def check_ranges(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for key, (lo, hi) in RANGES.items():
        value = getattr(args, key, None)
        if value is not None and not lo <= value <= hi:  # NaN compares False: refused too
            lo_, hi_ = (int(b) if float(b).is_integer() else b for b in (lo, hi))
            got = str(value) if len(str(value)) <= 24 else f"{str(value)[:20]}... ({len(str(value))} digits)"
            parser.error(f"--{key.replace('_', '-')} must be in {lo_}..{hi_}, got {got}")
