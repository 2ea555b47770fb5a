"""The whole method end to end, resumable: train -> (prune -> fine-tune)* -> fine-tune -> quantize ->
quantization-aware fine-tune, for any nn.Module and data.

``run`` is what ``fisherpack reproduce`` does after loading data; its steps are ``schedule.plan``'s:

1. train the model with Adam for ``epochs`` epochs (or start from a checkpoint's weights);
2. for each rate of ``prune.schedule(compress.rate, rounds)``: estimate the Fisher (by default from
   Adam's ``exp_avg_sq``, no extra pass; see oneshot.estimate_fisher), remove whole channels first
   when ``structured`` > 0 (structured.py: the model really gets smaller), prune to that rate with
   ``compress.criterion`` (already pruned weights stay pruned), fine-tune ``finetune_epochs`` with
   the masks applied, learning from the trained dense model's soft targets too when ``distill`` > 0;
3. ``final_epochs`` more of masked fine-tuning;
4. estimate the Fisher once more and ``compress`` (quantize the survivors) into a Compressed, then
   ``qat_epochs`` of quantization-aware fine-tuning, widths and steps frozen, requantized after.

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
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from . import dist, models, prune, structured
from .checkpoint import (
    config_text,
    fingerprint,
    load_state,
    load_training_checkpoint,
    restore_checkpoint,
    save_state,
    training_batch_size,
)
from .compression import compress, compressible
from .config import PipelineConfig
from .defaults import default_config
from .errors import ConfigError
from .fpk import container as fmt
from .fpk.tensors import Compressed, QuantTensor
from .losses import Loss, Metric
from .oneshot import compress_checkpoint, estimate_fisher, pipeline_meta
from .quant import FakeQuant, requantize
from .schedule import Step, plan
from .train import Recipe, epoch_images, evaluate, measure, train_epoch

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
    data = (x_train, y_train, x_test, y_test)
    this = _Run(cfg, data, checkpoint, progress or _Silent(), model, loss, metric, masks_hook)
    this.restore(start)
    return this.steps(until)


class _Run:
    """One run of :func:`run`: the state that a checkpoint holds between steps, and the steps."""

    def __init__(self, cfg: PipelineConfig, data: tuple[torch.Tensor, ...], checkpoint: str | os.PathLike | None,
                 progress: Progress, model: torch.nn.Module | None, loss: Loss | None, metric: Metric | None,
                 masks_hook: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None) -> None:  # fmt: skip
        self.cfg, self.progress, self.loss, self.metric, self.masks_hook = cfg, progress, loss, metric, masks_hook
        self.x_train, self.y_train, self.x_test, self.y_test = data
        self.ckpt = Path(checkpoint) if checkpoint is not None else None
        self.config_json = config_text(cfg)  # what each checkpoint records
        torch.manual_seed(cfg.seed)
        self.model = models.build(cfg.model) if model is None else model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.names = compressible(self.model, cfg.compress.include, cfg.compress.exclude)
        frozen = [n for n, p in self.model.named_parameters() if n in self.names and not p.requires_grad]
        if frozen:  # it would be pruned and quantized but never fine-tuned, and has no Fisher
            raise ConfigError(f"parameter {frozen[0]!r} is frozen (requires_grad=False); the pipeline fine-tunes "
                              "what it compresses: unfreeze it, or exclude it from compression")  # fmt: skip
        self.masks: dict[str, torch.Tensor] | None = None
        self.index, self.figures = 0, {}
        self.quantized: Compressed | None = None
        self.teacher: torch.nn.Module | None = None
        self.data_key = fingerprint(*data) if self.ckpt is not None else ""

    def restore(self, start: dict[str, Any] | None) -> None:
        """Pick up from the checkpoint when there is one for this config and data, else from ``start``."""
        cfg, model = self.cfg, self.model
        state = load_state(self.ckpt, cfg, self.data_key) if self.ckpt is not None else None
        from_start = state is None and start is not None
        if from_start:
            state = {**start, "index": cfg.epochs, "masks": start.get("masks") or {},
                     "figures": json.dumps(start.get("figures", {}))}  # fmt: skip
            state.update(quantized=torch.zeros(0), teacher={})
            if cfg.distill > 0:
                state["teacher"] = start["model"]
        if state is not None:
            if structured.fit(model, state["model"]):  # a model shrunk by structured pruning
                self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            model.load_state_dict(state["model"])
            # torch shares the given state's tensors and Adam updates them in place: a copy keeps the
            # caller's ``start`` intact, so that several runs from one start are independent
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]) if from_start else state["optimizer"])
            self.masks = state["masks"] or None
            self.index, self.figures = state["index"], json.loads(state["figures"])
            if "rng" in state:  # a checkpoint, not ``start``: nothing draws from it today; dropout would
                torch.set_rng_state(state["rng"])
            if state["quantized"].numel():
                self.quantized = fmt.decode(state["quantized"].numpy().tobytes())
            if state["teacher"]:  # the dense model as trained: full size, also when ``model`` was shrunk since
                teacher = copy.deepcopy(model)
                structured.fit(teacher, state["teacher"])
                teacher.load_state_dict(state["teacher"])
                self.teacher = teacher.eval()
        self.net = dist.wrap(model)  # DDP under torch.distributed (rank 0's weights to all), else the model

    def score(self, m: torch.nn.Module) -> float:
        x, y = self.x_test, self.y_test
        return evaluate(m, x, y)[0] if self.metric is None else measure(m, x, y, self.metric)

    def save(self, next_index: int) -> None:
        if self.ckpt is None:
            return
        quantized, teacher = self.quantized, self.teacher
        spec = fmt.encode(quantized, entropy=False) if quantized is not None else b""
        snapshot = {
            "config": self.config_json,
            "data": self.data_key,
            "rng": torch.get_rng_state(),
            "index": next_index,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "masks": self.masks or {},
            "figures": json.dumps(self.figures),
            "quantized": torch.frombuffer(bytearray(spec), dtype=torch.uint8) if spec else torch.zeros(0),
            "teacher": teacher.state_dict() if teacher is not None else {},
        }
        dist.from_rank0(lambda: save_state(self.ckpt, snapshot), f"writing checkpoint {self.ckpt}")

    def fisher(self, salt: int) -> dict[str, torch.Tensor]:
        return estimate_fisher(self.cfg, self.model, self.optimizer, self.x_train, self.y_train, salt, self.loss)

    def quantize(self, salt: int) -> Compressed:
        self.progress.stage("quantize")
        fisher = self.fisher(salt)
        self.figures["test_error_pruned"] = self.score(self.model)
        # pruning is done: pass the masks, so compress prunes nothing more
        out = compress(self.model, fisher, self.cfg.compress.replace(rate=0.0), masks=self.masks)
        meta = pipeline_meta(self.cfg, self.figures.get("original"))  # the whole config, not the step's
        return Compressed(out.tensors, meta)

    def steps(self, until: str) -> Outcome:
        """The steps from the checkpoint's on, then the Outcome."""
        steps = plan(self.cfg, until=until)
        sizes = [epoch_images(len(self.x_train), self.cfg.batch_size, step.fraction) for step in steps]
        self.progress.start(sum(sizes), sum(sizes[: self.index]))
        self.params = dict(self.model.named_parameters())
        for i in range(self.index, len(steps)):
            self.step(i, steps[i])
        if "test_error_before" not in self.figures:  # no training epochs: the model as initialised
            self.figures["test_error_before"] = self.score(self.model)
        model, optimizer, figures, masks = self.model, self.optimizer, self.figures, self.masks
        if until == "train":
            return Outcome(model, optimizer, None, figures, masks)
        if self.quantized is None:
            return Outcome(model, optimizer, self.quantize(salt=len(steps)), figures, masks)
        # after quantization-aware fine-tuning: the frozen layout, codes of the fine-tuned weights
        q, params = self.quantized, self.params
        tensors = {n: requantize(t, params[n]) if isinstance(t, QuantTensor) else t for n, t in q.tensors.items()}
        return Outcome(model, optimizer, Compressed(tensors, q.meta), figures, masks)

    def step(self, i: int, step: Step) -> None:
        """Step ``i``: prune or quantize first where it says so, then its epoch of training."""
        cfg, fake_quant = self.cfg, None
        if step.kind == "prune":
            self.prune(i, step)
        elif step.kind == "qat":
            if self.quantized is None:
                self.quantized = self.quantize(salt=i)
                self.figures["test_error_quantized"] = self.score(_decoded(self.quantized, self.model))
            fake_quant = {n: FakeQuant(q) for n, q in self.quantized.tensors.items() if isinstance(q, QuantTensor)}
        self.progress.stage(step.label)
        for group in self.optimizer.param_groups:
            group["lr"] = step.lr
        teacher = self.teacher if step.kind != "train" else None
        recipe = Recipe(fake_quant=fake_quant, teacher=teacher, distill=cfg.distill, augment=cfg.augment,
                        loss=self.loss)  # fmt: skip
        train_epoch(self.net, self.optimizer, self.x_train, self.y_train, batch_size=cfg.batch_size, seed=cfg.seed,
                    epoch=step.epoch, masks=self.masks, fraction=step.fraction,
                    on_batch=lambda n, loss: self.progress.advance(n), recipe=recipe)  # fmt: skip
        if i + 1 == cfg.epochs:
            self.figures["test_error_before"] = self.score(self.model)
            if cfg.distill > 0:  # the trained dense model teaches its pruned and quantized self
                self.teacher = copy.deepcopy(self.model).eval()
        self.save(i + 1)

    def prune(self, i: int, step: Step) -> None:
        """A pruning round: a fresh Fisher, structured pruning where the step has a share, then the masks."""
        cfg = self.cfg
        self.progress.stage(step.label)
        fisher = self.fisher(salt=i)
        rate = step.rate
        if step.structured:
            fisher, rate = self.shrink(step, fisher)
        params = self.params
        self.masks = prune.select(
            cfg.compress.criterion,
            {n: params[n].detach() for n in self.names},
            fisher,
            rate,
            scope=cfg.compress.scope,
            current=self.masks,
            magnitude_share=cfg.compress.magnitude_share,
            seed=cfg.compress.seed + i,
        )
        if self.masks_hook is not None:
            self.masks = self.masks_hook(self.masks)
        if dist.world_size() > 1:
            dist.agree(dist.digest(self.masks), f"the masks of step {i + 1} ({step.label})")
        prune.apply_masks(self.model, self.masks)

    def shrink(self, step: Step, fisher: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """Remove whole channels (structured pruning); returns the Fisher of what is left and the rate
        that unstructured pruning of the smaller model needs to reach the step's rate of the original."""
        model, figures, names, example = self.model, self.figures, self.names, self.x_train[:2]
        if "original" not in figures:  # the model as the user built it, before its first shrink
            params = self.params
            figures.update(weights_before=sum(params[n].numel() for n in names),
                           original=structured.model_size(model),  # the ratio's base
                           removable_before=structured.removable(model, example))  # fmt: skip
        self.optimizer, self.masks, fisher, figures["removable_left"] = structured.shrink_step(
            model,
            self.optimizer,
            fisher,
            self.masks,
            step.structured,
            figures["removable_before"],
            example,
            floor=self.cfg.structured_min,
        )
        self.params, self.net = dict(model.named_parameters()), dist.wrap(model)
        # compress.rate counts the weights of the original model: prune the rest of the way
        left = sum(self.params[n].numel() for n in names)
        return fisher, max(0.0, 1.0 - (1.0 - step.rate) * figures["weights_before"] / left)


def _decoded(compressed: Compressed, like: torch.nn.Module) -> torch.nn.Module:
    """The decoded ``compressed`` in a copy of ``like`` (which stays as it is)."""
    model = copy.deepcopy(like)
    model.load_state_dict(compressed.state_dict())
    return model
