"""Worked example 2, *your loop, fisherpack plugged in*: the TinyResNet of examples/tinyres.py
trained, pruned in rounds, fine-tuned and quantization-aware fine-tuned by a plain PyTorch loop,
with :class:`fisherpack.plugin.Pruner` keeping the masks, the Fisher and the quantized layout::

    python -m examples.own_loop --out own_loop.fpk
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fisherpack
from examples.tinyres import build
from fisherpack.plugin import Pruner
from fisherpack.train import evaluate


def epoch(model, optimizer, pruner, x, y, seed: int) -> None:
    """One pass of *your* training loop; the two pruner lines are all fisherpack asks of it."""
    model.train()
    for xb, yb in fisherpack.data.batches(x, y, 64, shuffle=True, seed=seed):
        optimizer.zero_grad()
        with pruner.batch():  # quantized forward after prepare_qat; masks the gradients on exit
            nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        pruner.after_step()  # pruned weights back to zero


def run(epochs: int = 2, rounds: int = 3, rate: float = 0.9, bits: float = 4.0) -> tuple[fisherpack.Compressed, float]:
    """Returns the Compressed and the test error of the decoded file."""
    x, y, x_test, y_test = fisherpack.data.load().tensors()
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.AdamW(model.named_parameters(), lr=2e-3)
    config = fisherpack.CompressConfig(rate=rate, criterion="obd", bits=bits)
    pruner = Pruner(model, config, optimizer=optimizer)  # the Fisher: AdamW's exp_avg_sq
    for e in range(epochs):
        epoch(model, optimizer, pruner, x, y, seed=e)
    for r, step_rate in enumerate(fisherpack.prune.schedule(rate, rounds)):
        pruner.prune(step_rate)
        epoch(model, optimizer, pruner, x, y, seed=100 + r)
    pruner.prepare_qat()
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    epoch(model, optimizer, pruner, x, y, seed=1000)
    packed = pruner.convert(meta={"model": "examples.tinyres:build"})
    decoded = fisherpack.load_into(build(), fisherpack.fpk.container.decode(fisherpack.fpk.container.encode(packed)))
    return packed, evaluate(decoded, x_test, y_test)[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="TinyResNet pruned and quantized inside a plain training loop")
    p.add_argument("--out", default="own_loop.fpk")
    args = p.parse_args(argv)
    packed, error = run()
    fisherpack.save(packed, args.out)
    print(f"wrote {args.out}; test error of the file {error:.2%}")


if __name__ == "__main__":
    main()
