"""One-shot compression of a training checkpoint (``fisherpack compress``), and what the pipeline
shares with it: the Fisher estimate a config names, and the meta a pipeline's file records."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import torch

from . import dist
from . import fisher as fisher_mod
from .checkpoint import config_text, fingerprint, load_state, restore_checkpoint, save_state
from .compression import compress
from .config import PipelineConfig
from .data import batches
from .fpk.tensors import Compressed
from .losses import Loss
from .version import __version__

__all__ = ["estimate_fisher", "compress_checkpoint", "pipeline_meta"]


def estimate_fisher(
    cfg: PipelineConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    salt: int,
    loss: Loss | None = None,
) -> dict[str, torch.Tensor]:
    """The Fisher estimate ``cfg.fisher`` asks for; data estimators use a seeded subset of (x, y),
    the first ``fisher_samples`` of a permutation, sharded over ranks under torch.distributed."""
    if cfg.fisher == "adam":
        return fisher_mod.estimate("adam", model, optimizer=optimizer)
    first = itertools.islice(batches(x, y, cfg.fisher_samples, shuffle=True, seed=cfg.seed, epoch=10_000 + salt), 1)
    subset = [(dist.shard(xb), dist.shard(yb)) for xb, yb in first]  # this rank's share of the subset
    return fisher_mod.estimate(
        cfg.fisher, model, batches=subset, n_samples=cfg.fisher_samples, seed=cfg.seed + salt, loss_fn=loss
    )


def compress_checkpoint(
    ckpt: dict[str, Any],
    cfg: PipelineConfig,
    x_train: torch.Tensor | None,
    y_train: torch.Tensor | None,
    *,
    checkpoint: str | os.PathLike | None = None,
) -> Compressed:
    """One-shot prune + quantize of a training checkpoint, with the Fisher ``cfg.fisher`` names.

    With ``checkpoint``, a Fisher estimated from data is saved there once computed (the slow part)
    and reused by a rerun with the same settings, model and data; the caller deletes it when done.
    """
    model, optimizer = restore_checkpoint(ckpt, cfg.lr)
    if checkpoint is None or cfg.fisher == "adam":  # Adam's state is the estimate: nothing to save
        fisher = estimate_fisher(cfg, model, optimizer, x_train, y_train, salt=0)
    else:
        key = fingerprint(*model.state_dict().values(), x_train, y_train)
        state = load_state(Path(checkpoint), cfg, key, "data or another model")
        fisher = state["fisher"] if state is not None else None
        if fisher is None:
            fisher = estimate_fisher(cfg, model, optimizer, x_train, y_train, salt=0)
            snapshot = {"config": config_text(cfg), "data": key, "fisher": fisher}
            dist.from_rank0(lambda: save_state(Path(checkpoint), snapshot), f"writing checkpoint {checkpoint}")
    return Compressed(compress(model, fisher, cfg.compress).tensors, pipeline_meta(cfg))


def pipeline_meta(cfg: PipelineConfig, original: dict[str, int] | None = None) -> dict[str, Any]:
    """A pipeline file's meta (see fpk/meta.py): the version, the whole config (which holds the
    compress config, model and seed) and, after structured pruning, the original model's size."""
    meta = {"fisherpack": __version__, "pipeline": cfg.to_dict()}
    return meta if original is None else {**meta, "original": original}
