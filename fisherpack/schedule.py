"""The pipeline's schedule: which steps a run takes, in order, with their learning rates and rates.

A step is one unit of work between checkpoints, so a checkpoint records how many are done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import prune
from .config import PipelineConfig

__all__ = ["Step", "plan"]


@dataclass(frozen=True)
class Step:
    """One unit of work between checkpoints: an epoch of training, a pruning round, or an epoch of
    masked fine-tuning after the last round."""

    kind: str  # "train" | "prune" | "tune" (more fine-tuning after a prune) | "final" | "qat"
    epoch: int  # index into the shuffling sequence: every step sees its own order
    lr: float
    fraction: float = 1.0
    rate: float = 0.0
    label: str = ""
    structured: float = 0.0  # of a prune step: the fraction of removable weights gone after it


def _cosine(lr: float, i: int, n: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * i / n))


def _passes(epochs: float) -> list[float]:
    """Fractions of an epoch that add up to ``epochs``: whole passes, then the rest (at least one)."""
    whole = math.floor(epochs)
    rest = epochs - whole
    return [1.0] * whole + ([rest] if rest > 1e-9 else []) or [0.0]


def plan(cfg: PipelineConfig, *, until: str = "quantize") -> list[Step]:
    """The steps ``run`` takes, in order; a checkpoint records how many are done."""
    steps = []
    for e in range(cfg.epochs):
        lr = _cosine(cfg.lr, e, cfg.epochs) if cfg.lr_schedule == "cosine" else cfg.lr
        steps.append(Step("train", e, lr, label=f"train epoch {e + 1}/{cfg.epochs}"))
    if until == "train":
        return steps
    rates = prune.schedule(cfg.compress.rate, cfg.rounds) if cfg.compress.rate > 0 or cfg.structured > 0 else []
    shares = prune.schedule(cfg.structured, cfg.rounds) if cfg.structured > 0 else [0.0] * len(rates)
    for r, (rate, share) in enumerate(zip(rates, shares)):
        label = f"prune to {rate:.1%} ({r + 1}/{len(rates)})"
        if share:
            label += f", {share:.0%} of removable channels' weights"
        passes = _passes(cfg.finetune_epochs)  # e.g. 2.5 -> [1.0, 1.0, 0.5]: one step per pass over the data
        steps.append(Step("prune", len(steps), cfg.finetune_lr, passes[0], rate, label, share))
        for p, fraction in enumerate(passes[1:], start=2):
            steps.append(Step("tune", len(steps), cfg.finetune_lr, fraction, rate, f"{label}, epoch {p}"))
    for f in range(cfg.final_epochs):
        lr = _cosine(cfg.finetune_lr, f, cfg.final_epochs) if cfg.lr_schedule == "cosine" else cfg.finetune_lr
        steps.append(Step("final", len(steps), lr, label=f"fine-tune {f + 1}/{cfg.final_epochs}"))
    for q in range(cfg.qat_epochs):
        lr = _cosine(cfg.qat_lr, q, cfg.qat_epochs) if cfg.lr_schedule == "cosine" else cfg.qat_lr
        steps.append(Step("qat", len(steps), lr, label=f"quantization-aware {q + 1}/{cfg.qat_epochs}"))
    return steps
