"""Sweeps: the same measurements for every method, resumable point by point.

A sweep is a list of *points* (sweepplan.py: what they are, their keys, the plan of one model). A
point's result is stored under its key as soon as it is measured; a finished point is never
recomputed, so a killed sweep resumes.

Every point measures one *subject* (subject.py): a model factory with its train, validation and
optional test splits, its default settings, its loss and its metric. A registry model is a subject
like any other (MNIST, the last ``VAL_SIZE`` of a fixed permutation of the training images held
out, the same for every seed); a user's ``package.module:factory`` with its data is another, run by
the same code. Every choice is measured on the validation split; the test split, if any, is
recorded beside it for reporting only. The records' ``val_error`` and ``test_error`` hold the
subject's metric (the error rate unless it says otherwise). Each (model, seed) starts from one base
model trained with the subject's ``defaults`` (a registry model's ``pipeline.default_config``,
any other model's ``PipelineConfig()``; none when it arrives trained), cached in the work folder.

- ``prune``: one-shot pruning of the base model at ``rate`` by ``method`` (criterion x Fisher
  source), errors before and after ``finetune_epochs`` of masked fine-tuning (same budget for all).
- ``quant``: quantization of the dense base model to ``bits`` by ``scheme``: the paper's Fisher
  quantile groups, the Fisher-weighted water-filling (1 or 4 groups per layer), uniform fixed
  point, k-means weight sharing; errors before and after ``qat_epochs`` of fine-tuning.
- ``pipeline``: the whole pipeline (iterative pruning, quantization, QAT) to a file; its bytes
  on disk against the error, for fisherpack's settings and for magnitude + uniform.
"""

from __future__ import annotations

import copy
import io
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import fisher as fisher_mod
from .. import losses, pipeline, prune, quant
from ..compression import compress, compressible
from ..config import CompressConfig
from ..data import batches
from ..fpk import container as fmt
from ..fpk.fileio import atomic_write_bytes
from ..loading import load_into, summary
from ..train import Recipe, measure, train_epoch
from .baselines import SharedWeights
from .subject import Subject, slug
from .sweepplan import (  # noqa: F401  (the sweep's whole vocabulary, from one module)
    PIPELINE_METHODS,
    PRUNE_METHODS,
    QUANT_SCHEMES,
    key,
    pending,
    pipeline_config,
    plan,
    settings,
    settings_id,
)

__all__ = ["VAL_SIZE", "Sweep", "base_figures", "key", "plan", "pending", "settings", "settings_id"]

VAL_SIZE = 10_000
FISHER_SAMPLES = 1000


class Sweep:
    """Runs points against their subjects (by the spec's ``model``), caching base models under ``workdir``.

    ``results`` maps keys to results and is updated in place; ``on_result(results)`` is called
    after each new point (the caller persists it). The class touches only ``workdir``.
    """

    def __init__(self, subjects: Iterable[Subject], workdir: str | os.PathLike) -> None:
        self.subjects = {s.name: s for s in subjects}
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._fisher: dict[tuple, dict[str, torch.Tensor]] = {}
        self._bases: dict[Path, dict[str, Any]] = {}  # read once; restore() copies what it changes

    # ------------------------------------------------------------------ shared pieces
    def base(self, model: str, seed: int, epochs: int | None = None) -> dict[str, Any]:
        """The trained dense model of (model, seed): state dicts and figures, cached on disk.

        ``epochs`` replaces the default number of training epochs (the quick sweep trains less)."""
        subject = self.subjects[model]
        cfg = subject.defaults.replace(seed=seed)
        cfg = cfg if epochs is None else cfg.replace(epochs=epochs)
        name = f"{slug(model)}-{settings_id(subject.defaults)}-{subject.cache_id}"
        path = self.workdir / f"base-{name}-seed{seed}{'' if epochs is None else f'-e{epochs}'}.pt"
        if path in self._bases:
            return self._bases[path]
        if path.exists():
            self._bases[path] = torch.load(path, weights_only=True)
            return self._bases[path]
        torch.manual_seed(cfg.seed)  # the initial weights, as pipeline.run draws them
        train, val = subject.train, subject.val
        out = pipeline.run(cfg, *train, *val, model=subject.build(), loss=subject.loss, metric=subject.metric,
                           checkpoint=f"{path}.ckpt", until="train")  # fmt: skip
        state = {"model": out.model.state_dict(), "optimizer": out.optimizer.state_dict(), "figures": out.figures}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())
        Path(f"{path}.ckpt").unlink(missing_ok=True)
        return state

    def restore(
        self, model: str, seed: int, lr: float, epochs: int | None = None
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        state = self.base(model, seed, epochs)
        net = self.subjects[model].build()
        net.load_state_dict(state["model"])
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        opt.load_state_dict(copy.deepcopy(state["optimizer"]))  # Adam would update the cached tensors in place
        for group in opt.param_groups:
            group["lr"] = lr
        return net, opt

    def fisher(self, model: str, seed: int, source: str, epochs: int | None = None) -> dict[str, torch.Tensor]:
        """Fisher of the base model: Adam's state, or 1,000 training samples (cached per run)."""
        k = (model, seed, source, epochs)
        if k not in self._fisher:
            net, opt = self.restore(model, seed, 1e-3, epochs)
            subject = self.subjects[model]
            data = batches(*subject.train, FISHER_SAMPLES, shuffle=True, seed=seed, epoch=20_000)
            self._fisher[k] = fisher_mod.estimate(
                source, net, optimizer=opt, batches=data, n_samples=FISHER_SAMPLES, seed=seed, loss_fn=subject.loss
            )
        return self._fisher[k]

    def errors(self, model: str, net: torch.nn.Module) -> dict[str, float]:
        """The subject's metric on validation (and test, if it has one) and the mean loss on validation."""
        subject = self.subjects[model]
        loss = subject.loss or losses.cross_entropy

        def mean_loss(out: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
            return float(loss(out, y)) * len(y), len(y)

        out = {"val_error": measure(net, *subject.val, subject.metric)}
        out["val_loss"] = measure(net, *subject.val, mean_loss)
        if subject.test is not None:
            out["test_error"] = measure(net, *subject.test, subject.metric)
        return out

    def finetune(self, model: str, net, opt, epochs: float, seed: int, salt: int, masks=None, fake_quant=None) -> None:
        """``epochs`` of (masked, or fake-quantized) fine-tuning at the optimizer's lr, cosine-decayed."""
        subject = self.subjects[model]
        lr, done, e = opt.param_groups[0]["lr"], 0.0, 0
        while done < epochs - 1e-9:
            part = min(1.0, epochs - done)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * done / epochs))
            train_epoch(
                net, opt, *subject.train, batch_size=subject.defaults.batch_size, seed=seed,
                epoch=1000 + 100 * salt + e, masks=masks, fraction=part,
                recipe=Recipe(fake_quant=fake_quant, loss=subject.loss),
            )  # fmt: skip
            done, e = done + part, e + 1

    def _weights(self, model: str, net: torch.nn.Module) -> list[str]:
        """The names of the parameters the subject's settings compress."""
        settings = self.subjects[model].defaults.compress
        return compressible(net, settings.include, settings.exclude)

    # ------------------------------------------------------------------ points
    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        kind = spec["sweep"]
        result = {"prune": self._prune, "quant": self._quant, "pipeline": self._pipeline}[kind](spec)
        result["seconds"] = round(time.perf_counter() - started, 2)
        return result

    def _prune(self, spec: dict[str, Any]) -> dict[str, Any]:
        model, seed = spec["model"], spec["seed"]
        criterion, source = PRUNE_METHODS[spec["method"]]
        epochs = spec.get("train_epochs")
        net, opt = self.restore(model, seed, self.subjects[model].defaults.finetune_lr, epochs)
        names = self._weights(model, net)
        params = dict(net.named_parameters())
        fisher = self.fisher(model, seed, source, epochs) if source else None
        weights = {n: params[n].detach() for n in names}
        masks = prune.select(criterion, weights, fisher, spec["rate"], scope=spec["scope"], seed=seed)
        prune.apply_masks(net, masks)
        out = {"oneshot": self.errors(model, net), "kept": {n: float(m.float().mean()) for n, m in masks.items()}}
        if spec["finetune_epochs"] > 0:
            self.finetune(model, net, opt, spec["finetune_epochs"], seed, salt=1, masks=masks)
            out["finetuned"] = self.errors(model, net)
        return out

    def _quant(self, spec: dict[str, Any]) -> dict[str, Any]:
        model, seed, scheme, bits = spec["model"], spec["seed"], spec["scheme"], spec["bits"]
        epochs = spec.get("train_epochs")
        net, opt = self.restore(model, seed, 1e-4, epochs)
        names = self._weights(model, net)
        params = dict(net.named_parameters())
        if scheme == "kmeans":
            shared = {n: SharedWeights(params[n].detach(), params[n].detach() != 0, bits) for n in names}
            with torch.no_grad():
                for n, sw in shared.items():
                    params[n].copy_(sw())
            out = {"avg_bits": float(bits), "ptq": self.errors(model, net)}
            codebook_bytes = 4 * (1 << bits) * len(names)
            out["est_bytes"] = int(sum(p.numel() for p in weights_of(net, names)) * bits / 8 + codebook_bytes)
            if spec["qat_epochs"] > 0:
                self._finetune_codebooks(model, net, shared, spec["qat_epochs"], seed)
                out["qat"] = self.errors(model, net)
            return out
        defaults = self.subjects[model].defaults
        allocation = {"quantile": "quantile", "uniform": "uniform"}.get(scheme, "waterfill")
        cfg = CompressConfig(
            allocation=allocation, bits=float(bits), groups=4 if scheme == "waterfill-g4" else 1,
            group_bits=(bits + 1, bits, max(bits - 1, 1)), include=defaults.compress.include,
            exclude=defaults.compress.exclude,
        )  # fmt: skip
        packed = compress(net, self.fisher(model, seed, defaults.fisher, epochs), cfg)
        figures = summary(packed, len(fmt.encode(packed)))
        out = {"avg_bits": figures["avg_bits"], "file_bytes": figures["file_bytes"]}
        net.load_state_dict(packed.state_dict())
        out["ptq"] = self.errors(model, net)
        if spec["qat_epochs"] > 0:
            q = {n: t for n, t in packed.tensors.items() if isinstance(t, quant.QuantTensor)}
            net.load_state_dict(self.base(model, seed, epochs)["model"])  # latent weights start at the float ones
            fake_quant = {n: quant.FakeQuant(t) for n, t in q.items()}
            self.finetune(model, net, opt, spec["qat_epochs"], seed, salt=2, fake_quant=fake_quant)
            with torch.no_grad():
                for n, t in q.items():
                    params[n].copy_(quant.requantize(t, params[n]).dequantize())
            out["qat"] = self.errors(model, net)
        return out

    def _finetune_codebooks(self, model: str, net, shared: dict[str, SharedWeights], epochs: float, seed: int) -> None:
        subject = self.subjects[model]
        loss = subject.loss or losses.cross_entropy
        opt = torch.optim.Adam([sw.codebook for sw in shared.values()], lr=1e-4)
        x, y = subject.train
        for e in range(int(np.ceil(epochs))):
            fraction = min(1.0, epochs - e)
            for i, (xb, yb) in enumerate(batches(x, y, 64, shuffle=True, seed=seed, epoch=3000 + e)):
                if i >= fraction * len(x) / 64:
                    break
                opt.zero_grad()
                out = torch.func.functional_call(net, {n: sw() for n, sw in shared.items()}, (xb,))
                loss(out, yb).backward()
                opt.step()
        with torch.no_grad():
            params = dict(net.named_parameters())
            for n, sw in shared.items():
                params[n].copy_(sw())

    def _pipeline(self, spec: dict[str, Any]) -> dict[str, Any]:
        subject = self.subjects[spec["model"]]
        cfg = pipeline_config(spec, subject.defaults)
        start = self.base(spec["model"], spec["seed"], spec.get("train_epochs"))
        out = pipeline.run(cfg, *subject.train, *subject.val, start=start, model=subject.build(), loss=subject.loss,
                           metric=subject.metric)  # fmt: skip
        blob = fmt.encode(out.compressed, entropy=cfg.compress.entropy)
        net = load_into(subject.build(), fmt.decode(blob))  # the file's layer sizes after structured pruning
        figures = summary(out.compressed, len(blob))
        errors = self.errors(spec["model"], net)
        return {**errors, **{k: figures[k] for k in ("file_bytes", "ratio", "avg_bits", "kept_fraction")}}


def base_figures(runner: Sweep, specs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The metric on validation (and test) of the dense base model of every (model, seed) in
    ``specs``, keyed "model/seed": the reference the sweep's points are measured against."""
    out = {}
    for spec in specs:
        name = f"{spec['model']}/{spec['seed']}"
        if name not in out:
            net, _ = runner.restore(spec["model"], spec["seed"], 1e-3, spec.get("train_epochs"))
            errors = runner.errors(spec["model"], net)
            out[name] = {k: errors[k] for k in ("val_error", "test_error") if k in errors}
    return out


def weights_of(net: torch.nn.Module, names: list[str]) -> list[torch.Tensor]:
    params = dict(net.named_parameters())
    return [params[n] for n in names]
