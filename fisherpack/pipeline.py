"""The whole method end to end, resumable: train -> (prune -> fine-tune -> re-estimate)* -> quantize.

``run`` is what ``fisherpack reproduce`` does after loading data:

1. train the model with Adam for ``epochs`` epochs;
2. for each rate of ``prune.schedule(compress.rate, rounds)``: estimate the Fisher (by default from
   Adam's ``exp_avg_sq``, no extra pass), prune to that rate with ``compress.criterion`` (already
   pruned weights stay pruned), fine-tune ``finetune_epochs`` with the masks applied;
3. estimate the Fisher once more and ``compress`` (quantize the survivors) into a Compressed.

After each epoch or round the state (model, optimizer, masks, figures, torch's global RNG) is
saved to a checkpoint file, written atomically and read back with ``torch.load(weights_only=True)``;
a run started again with the same config and data (checked by a SHA-256 fingerprint) resumes from
it and ends with the same bytes, however it was stopped, SIGKILL included. Shuffling depends only on
(seed, epoch index), so a resumed run sees the data in the same order.

Under torch.distributed (see dist.py) ``run`` is a collective: call it on every rank with the same
config and data. The model trains in DistributedDataParallel with each rank on its shard of every
global batch (train.py); data Fisher estimators shard their seeded subset the same way and
all-reduce their sums (fisher.py); after every pruning round the ranks compare a SHA-256 of their
masks and stop with RanksDisagreeError if they differ. Rank 0 alone writes checkpoints and reads
them back, handing the bytes to the others, so ranks on machines without a shared disk resume too.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from . import dist, models, prune, structured
from . import fisher as fisher_mod
from .checkpoint import (
    fingerprint,
    load_state,
    load_training_checkpoint,
    restore_checkpoint,
    save_state,
    training_batch_size,
)
from .compression import compress, compressible
from .config import PipelineConfig
from .data import batches
from .defaults import default_config
from .errors import ConfigError
from .fpk import container as fmt
from .fpk.tensors import Compressed, QuantTensor
from .losses import Loss, Metric
from .quant import FakeQuant, requantize
from .train import Recipe, epoch_images, evaluate, measure, train_epoch
from .version import __version__

__all__ = [
    "Progress",
    "Outcome",
    "run",
    "estimate_fisher",
    "default_config",
    "load_training_checkpoint",
    "compress_checkpoint",
    "fingerprint",
    "restore_checkpoint",
    "training_batch_size",
]


class Progress(Protocol):
    """What the pipeline reports to: total work in images, work done, and the current stage."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def stage(self, text: str) -> None: ...


class _Silent:
    def start(self, total: int, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def stage(self, text: str) -> None: ...


@dataclass
class Outcome:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    compressed: Compressed | None  # None when the run stopped after training
    figures: dict[str, Any]
    masks: dict[str, torch.Tensor] | None = None  # the pruning masks, None when nothing was pruned


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


@dataclass(frozen=True)
class _Step:
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


def plan(cfg: PipelineConfig, *, until: str = "quantize") -> list[_Step]:
    """The steps ``run`` takes, in order; a checkpoint records how many are done."""
    steps = []
    for e in range(cfg.epochs):
        lr = _cosine(cfg.lr, e, cfg.epochs) if cfg.lr_schedule == "cosine" else cfg.lr
        steps.append(_Step("train", e, lr, label=f"train epoch {e + 1}/{cfg.epochs}"))
    if until == "train":
        return steps
    rates = prune.schedule(cfg.compress.rate, cfg.rounds) if cfg.compress.rate > 0 or cfg.structured > 0 else []
    shares = prune.schedule(cfg.structured, cfg.rounds) if cfg.structured > 0 else [0.0] * len(rates)
    for r, (rate, share) in enumerate(zip(rates, shares)):
        label = f"prune to {rate:.1%} ({r + 1}/{len(rates)})"
        if share:
            label += f", {share:.0%} of removable channels' weights"
        passes = _passes(cfg.finetune_epochs)  # e.g. 2.5 -> [1.0, 1.0, 0.5]: one step per pass over the data
        steps.append(_Step("prune", len(steps), cfg.finetune_lr, passes[0], rate, label, share))
        for p, fraction in enumerate(passes[1:], start=2):
            steps.append(_Step("tune", len(steps), cfg.finetune_lr, fraction, rate, f"{label}, epoch {p}"))
    for f in range(cfg.final_epochs):
        lr = _cosine(cfg.finetune_lr, f, cfg.final_epochs) if cfg.lr_schedule == "cosine" else cfg.finetune_lr
        steps.append(_Step("final", len(steps), lr, label=f"fine-tune {f + 1}/{cfg.final_epochs}"))
    for q in range(cfg.qat_epochs):
        lr = _cosine(cfg.qat_lr, q, cfg.qat_epochs) if cfg.lr_schedule == "cosine" else cfg.qat_lr
        steps.append(_Step("qat", len(steps), lr, label=f"quantization-aware {q + 1}/{cfg.qat_epochs}"))
    return steps


def run(
    cfg: PipelineConfig,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    checkpoint: str | os.PathLike | None = None,
    progress: Progress | None = None,
    until: str = "quantize",
    start: dict[str, Any] | None = None,
    model: torch.nn.Module | None = None,
    loss: Loss | None = None,
    metric: Metric | None = None,
    masks_hook: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> Outcome:
    """Train, prune and quantize as ``cfg`` says; returns the model, the Compressed and figures.

    ``until="train"`` stops after training (``fisherpack train``), with ``compressed`` None.
    ``start`` skips training: ``{"model": state_dict, "optimizer": state_dict, "figures": dict}`` of
    a model trained with ``cfg``'s training settings (as ``until="train"`` returns them), and
    optionally ``"masks"`` of a model already pruned (its pruned weights stay pruned).

    Any model: ``model`` (changed in place) replaces the registry's ``cfg.model``, which then only
    names it in the file; ``loss(output, target)`` (a mini-batch mean, see losses.py) replaces
    cross-entropy on (N, classes) logits in training and in a data Fisher; ``metric`` (see
    losses.py) replaces the error rate in the figures (keys ``test_error_*`` hold its value on
    ``x_test``, ``y_test``, whatever split the caller passes there). ``x`` is one tensor with the
    samples along dim 0, ``y`` targets of any shape the loss takes. ``masks_hook`` sees (and may
    replace) each round's masks before the ranks compare them (the tests make a rank diverge).
    """
    if any("rate" in settings for _, settings in cfg.compress.overrides):  # issue 5: see compress.select_masks
        raise ConfigError("per-layer rate overrides apply to one-shot compression (fisherpack compress); "
                          "iterative pruning prunes all layers to one rate")  # fmt: skip
    progress = progress or _Silent()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    config_json = json.dumps(cfg.to_dict(), sort_keys=True)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model) if model is None else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    names = compressible(model, cfg.compress.include, cfg.compress.exclude)
    frozen = [n for n, p in model.named_parameters() if n in names and not p.requires_grad]
    if frozen:  # it would be pruned and quantized but never fine-tuned, and has no Fisher
        raise ConfigError(f"parameter {frozen[0]!r} is frozen (requires_grad=False); the pipeline fine-tunes what it "
                          "compresses: unfreeze it, or exclude it from compression")  # fmt: skip
    masks: dict[str, torch.Tensor] | None = None
    index, figures, quantized, teacher = 0, {}, None, None
    data_key = fingerprint(x_train, y_train, x_test, y_test) if ckpt is not None else ""
    state = load_state(ckpt, cfg, data_key) if ckpt is not None else None
    from_start = state is None and start is not None
    if from_start:
        state = {**start, "index": cfg.epochs, "masks": start.get("masks") or {},
                 "figures": json.dumps(start.get("figures", {}))}  # fmt: skip
        state.update(quantized=torch.zeros(0), teacher={})
        if cfg.distill > 0:
            state["teacher"] = start["model"]
    if state is not None:
        if structured.fit(model, state["model"]):  # a model shrunk by structured pruning
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        model.load_state_dict(state["model"])
        # torch shares the given state's tensors and Adam updates them in place: a copy keeps the
        # caller's ``start`` intact, so that several runs from one start are independent
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]) if from_start else state["optimizer"])
        masks = state["masks"] or None
        index, figures = state["index"], json.loads(state["figures"])
        if "rng" in state:  # a checkpoint, not ``start``: nothing draws from it today; dropout would
            torch.set_rng_state(state["rng"])
        if state["quantized"].numel():
            quantized = fmt.decode(state["quantized"].numpy().tobytes())
        if state["teacher"]:  # the dense model as trained: full size, also when ``model`` was shrunk since
            teacher = copy.deepcopy(model)
            structured.fit(teacher, state["teacher"])
            teacher.load_state_dict(state["teacher"])
            teacher.eval()

    def score(m: torch.nn.Module) -> float:
        return evaluate(m, x_test, y_test)[0] if metric is None else measure(m, x_test, y_test, metric)

    net = dist.wrap(model)  # DDP under torch.distributed (rank 0's weights to all), else the model

    def save(next_index: int) -> None:
        if ckpt is not None:
            spec = fmt.encode(quantized, entropy=False) if quantized is not None else b""
            snapshot = {
                "config": config_json,
                "data": data_key,
                "rng": torch.get_rng_state(),
                "index": next_index,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "masks": masks or {},
                "figures": json.dumps(figures),
                "quantized": torch.frombuffer(bytearray(spec), dtype=torch.uint8) if spec else torch.zeros(0),
                "teacher": teacher.state_dict() if teacher is not None else {},
            }
            dist.from_rank0(lambda: save_state(ckpt, snapshot), f"writing checkpoint {ckpt}")

    def quantize(salt: int) -> Compressed:
        progress.stage("quantize")
        fisher = estimate_fisher(cfg, model, optimizer, x_train, y_train, salt=salt, loss=loss)
        figures["test_error_pruned"] = score(model)
        # pruning is done: pass the masks, so compress prunes nothing more
        out = compress(model, fisher, cfg.compress.replace(rate=0.0), masks=masks)
        return Compressed(out.tensors, _meta(cfg, figures.get("original")))  # the whole config, not the step's

    steps = plan(cfg, until=until)
    n_train = len(x_train)
    sizes = [epoch_images(n_train, cfg.batch_size, step.fraction) for step in steps]
    progress.start(sum(sizes), sum(sizes[:index]))
    params = dict(model.named_parameters())
    for i in range(index, len(steps)):
        step = steps[i]
        fake_quant = None
        if step.kind == "prune":
            progress.stage(step.label)
            fisher = estimate_fisher(cfg, model, optimizer, x_train, y_train, salt=i, loss=loss)
            rate = step.rate
            if step.structured:
                example = x_train[:2]
                if "original" not in figures:  # the model as the user built it, before its first shrink
                    figures.update(weights_before=sum(params[n].numel() for n in names),
                                   original=structured.model_size(model),  # the ratio's base
                                   removable_before=structured.removable(model, example))  # fmt: skip
                optimizer, masks, fisher, figures["removable_left"] = structured.shrink_step(
                    model, optimizer, fisher, masks, step.structured, figures["removable_before"], example
                )
                params, net = dict(model.named_parameters()), dist.wrap(model)
                # compress.rate counts the weights of the original model: prune the rest of the way
                left = sum(params[n].numel() for n in names)
                rate = max(0.0, 1.0 - (1.0 - step.rate) * figures["weights_before"] / left)
            masks = prune.select(
                cfg.compress.criterion,
                {n: params[n].detach() for n in names},
                fisher,
                rate,
                scope=cfg.compress.scope,
                current=masks,
                magnitude_share=cfg.compress.magnitude_share,
                seed=cfg.compress.seed + i,
            )
            if masks_hook is not None:
                masks = masks_hook(masks)
            if dist.world_size() > 1:
                dist.agree(dist.digest(masks), f"the masks of step {i + 1} ({step.label})")
            prune.apply_masks(model, masks)
        elif step.kind == "qat":
            if quantized is None:
                quantized = quantize(salt=i)
                figures["test_error_quantized"] = score(_decoded(quantized, model))
            fake_quant = {n: FakeQuant(q) for n, q in quantized.tensors.items() if isinstance(q, QuantTensor)}
        progress.stage(step.label)
        for group in optimizer.param_groups:
            group["lr"] = step.lr
        train_epoch(
            net,
            optimizer,
            x_train,
            y_train,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            epoch=step.epoch,
            masks=masks,
            fraction=step.fraction,
            on_batch=lambda n, loss: progress.advance(n),
            recipe=Recipe(
                fake_quant=fake_quant,
                teacher=teacher if step.kind != "train" else None,
                distill=cfg.distill,
                augment=cfg.augment,
                loss=loss,
            ),
        )
        if i + 1 == cfg.epochs:
            figures["test_error_before"] = score(model)
            if cfg.distill > 0:  # the trained dense model teaches its pruned and quantized self
                teacher = copy.deepcopy(model).eval()
        save(i + 1)
    if "test_error_before" not in figures:  # no training epochs: the model as initialised
        figures["test_error_before"] = score(model)
    if until == "train":
        return Outcome(model, optimizer, None, figures, masks)
    if quantized is None:
        return Outcome(model, optimizer, quantize(salt=len(steps)), figures, masks)
    # after quantization-aware fine-tuning: the frozen layout, codes of the fine-tuned weights
    tensors = {n: requantize(q, params[n]) if isinstance(q, QuantTensor) else q for n, q in quantized.tensors.items()}
    return Outcome(model, optimizer, Compressed(tensors, quantized.meta), figures, masks)


def _decoded(compressed: Compressed, like: torch.nn.Module) -> torch.nn.Module:
    """The decoded ``compressed`` in a copy of ``like`` (which stays as it is)."""
    model = copy.deepcopy(like)
    model.load_state_dict(compressed.state_dict())
    return model


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
            snapshot = {"config": json.dumps(cfg.to_dict(), sort_keys=True), "data": key, "fisher": fisher}
            dist.from_rank0(lambda: save_state(Path(checkpoint), snapshot), f"writing checkpoint {checkpoint}")
    return Compressed(compress(model, fisher, cfg.compress).tensors, _meta(cfg))


def _meta(cfg: PipelineConfig, original: dict[str, int] | None = None) -> dict[str, Any]:
    """A pipeline file's meta (see fpk/meta.py): the version, the whole config (which holds the
    compress config, model and seed) and, after structured pruning, the original model's size."""
    meta = {"fisherpack": __version__, "pipeline": cfg.to_dict()}
    return meta if original is None else {**meta, "original": original}
