"""fisherpack inside your own training loop: masks kept applied, the Fisher from your optimizer or
your gradients, pruning rounds, quantization-aware training, and the file at the end.

The same steps as ``fisherpack reproduce`` (pipeline.py), driven by your loop instead of ours, in
the spirit of torch.ao's sparsifier and torchao's QAT prepare/convert::

    pruner = fisherpack.Pruner(model, fisherpack.CompressConfig(rate=0.9, criterion="obd", bits=4))
    for rate in fisherpack.prune.schedule(0.9, rounds=3):
        pruner.prune(rate)                      # Fisher -> masks, pruned weights set to zero
        for x, y in batches:                    # your fine-tuning loop
            optimizer.zero_grad()
            with pruner.batch():                # QAT forward after prepare_qat; grads masked on exit
                loss_fn(model(x), y).backward()
            optimizer.step()
            pruner.after_step()                 # pruned weights back to exactly zero
    pruner.prepare_qat()                        # freeze widths and steps; forward on quantized values
    ...                                         # more of your loop, as above
    packed = pruner.convert()                   # a Compressed: fisherpack.save(packed, "m.fpk")

**The Fisher.** With ``optimizer`` (Adam/AdamW, matched to parameters by identity) it is Adam's
``exp_avg_sq`` (see fisher.from_adam). Otherwise :meth:`Pruner.batch` accumulates the squared
mini-batch gradients of every compressed weight, and the estimate is their mean since the last
prune (``mean_b g_b**2``, the undecayed analogue of Adam's ``v``; same ranking up to scale).
A frozen parameter among the compressed ones is refused by name (it has no gradient).

**QAT.** Inside ``batch()`` after :meth:`prepare_qat` the compressed weights hold their quantized
values (the layout frozen by one ``compress``), the backward pass runs there, and on exit the float
(latent) weights come back, so the optimizer applies the quantized point's gradient to them: the
straight-through estimator, for any module (GRU and other fused kernels included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import fisher as fisher_mod
from . import prune
from .compression import compress, compressible
from .config import CompressConfig
from .errors import ConfigError
from .fpk.tensors import Compressed, QuantTensor
from .quant import FakeQuant, requantize

__all__ = ["Pruner"]


class Pruner:
    """Prune, fine-tune and quantize ``model`` in your own loop (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        config: CompressConfig | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.model, self.config, self.optimizer = model, config or CompressConfig(), optimizer
        self.names = compressible(model, self.config.include, self.config.exclude)
        if not self.names:
            raise ConfigError(
                "the model has no weights to compress (no floating-point parameter of 2 or more dimensions)"
            )
        self._params = dict(model.named_parameters())  # by identity: stays valid whatever the loop does
        frozen = [n for n in self.names if not self._params[n].requires_grad]
        if frozen:
            raise ConfigError(f"parameter {frozen[0]!r} is frozen (requires_grad=False): it has no gradient to rank or "
                              "fine-tune it by; unfreeze it, or exclude it from compression")  # fmt: skip
        self.masks: dict[str, torch.Tensor] | None = None
        self._squares = {n: torch.zeros_like(self._params[n], dtype=torch.float64) for n in self.names}
        self._batches = 0
        self._fake: dict[str, FakeQuant] | None = None
        self._layout: Compressed | None = None
        self.rounds = 0

    def fisher(self) -> dict[str, torch.Tensor]:
        """The current estimate for the compressed weights (see module docstring)."""
        if self.optimizer is not None:
            full = fisher_mod.from_adam(self.optimizer, self.model)
            return {n: full[n] for n in self.names if n in full}
        if self._batches == 0:
            raise ConfigError("no Fisher yet: run some batches inside pruner.batch() (or give the Adam optimizer)")
        return {n: (s / self._batches).to(self._params[n].dtype) for n, s in self._squares.items()}

    def prune(self, rate: float) -> float:
        """Prune to ``rate`` (a fraction of the compressed weights; already pruned ones stay pruned)
        with ``config.criterion`` on the current Fisher; returns the pruned fraction."""
        if self._fake is not None:
            raise ConfigError("prune before prepare_qat: the quantized layout is frozen")
        needs = self.config.ranks_by_fisher()
        weights = {n: self._params[n].detach() for n in self.names}
        self.masks = prune.select(
            self.config.criterion,
            weights,
            self.fisher() if needs else None,
            rate,
            scope=self.config.scope,
            current=self.masks,
            magnitude_share=self.config.magnitude_share,
            seed=self.config.seed + self.rounds,
        )
        self.rounds += 1
        self.after_step()
        self._squares = {n: torch.zeros_like(s) for n, s in self._squares.items()}
        self._batches = 0
        return prune.sparsity(self.masks)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Wrap one forward and backward pass: quantized weights inside after :meth:`prepare_qat`;
        on exit the float weights return, squared gradients are accumulated, pruned ones zeroed."""
        latent = {}
        if self._fake is not None:
            with torch.no_grad():
                for n, fq in self._fake.items():
                    latent[n] = self._params[n].detach().clone()
                    self._params[n].copy_(fq.values(latent[n]))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, w in latent.items():
                    self._params[n].copy_(w)
        grads = 0
        for n in self.names:
            g = self._params[n].grad
            if g is None:
                continue
            grads += 1
            self._squares[n] += g.detach().double().square()
            if self.masks is not None:
                g.mul_(self.masks[n].to(g.dtype))
        self._batches += 1 if grads else 0

    def after_step(self) -> None:
        """After ``optimizer.step()``: pruned weights back to exactly zero (momentum moves them)."""
        if self.masks is not None:
            with torch.no_grad():
                for n, m in self.masks.items():
                    self._params[n].mul_(m.to(self._params[n].dtype))

    def prepare_qat(self, meta: dict[str, Any] | None = None) -> Compressed:
        """Quantize once (widths, steps and grids frozen from then on) and return that file's
        content; from now on :meth:`batch` runs on the quantized values."""
        needs = self.config.needs_fisher(masks_given=True)
        packed = compress(self.model, self.fisher() if needs else None, self.config.replace(rate=0.0),
                          masks=self.masks, meta=meta)  # fmt: skip
        self._layout = packed
        self._fake = {
            n: FakeQuant(q) for n, q in packed.tensors.items() if isinstance(q, QuantTensor) and n in self._params
        }
        return packed

    def convert(self, meta: dict[str, Any] | None = None) -> Compressed:
        """The Compressed of the model as it is now: the frozen layout with codes of the current
        weights after :meth:`prepare_qat`, else a fresh quantization of the pruned model."""
        if self._layout is None:
            return self.prepare_qat(meta)
        tensors = {
            n: requantize(q, self._params[n]) if isinstance(q, QuantTensor) and n in self._params else q
            for n, q in self._layout.tensors.items()
        }
        return Compressed(tensors, {**self._layout.meta, **(meta or {})})
