"""Worked example 1, *fisherpack drives*: a GRU that reads MNIST images row by row, pruned and
quantized by the whole pipeline (train -> prune in rounds with the Fisher re-estimated ->
fine-tune -> quantization-aware fine-tuning -> file -> reload and measure)::

    python -m examples.rowgru --out rowgru.fpk

What the command line can name (``fisherpack reproduce --model ... --data ...``):

- ``examples.rowgru:build``: a fresh :class:`RowGRU`;
- ``examples.rowgru:splits``: MNIST as ``{"train": (x, y), "val": (x, y), "test": (x, y)}``, the
  validation set held out of the training images (fetched and cached on first use);
  ``examples.rowgru:tiny_splits`` a synthetic stand-in of a few hundred images (for tests).

``nn.GRU`` runs on fused kernels that ``torch.func.vmap`` cannot batch: a Fisher from data takes
fisherpack's exact per-sample path (with a one-line notice); the default Fisher reads Adam's state.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fisherpack
from fisherpack import pipeline
from fisherpack.budget import reload_and_measure
from fisherpack.losses import error


class RowGRU(nn.Module):
    """(N, 1, 28, 28) images -> (N, 10) logits: a GRU over the 28 rows, a linear head on its last state."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.rnn = nn.GRU(28, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(len(x), 28, 28)  # (N, rows, pixels)
        return self.head(self.rnn(rows)[0][:, -1])


def build(hidden: int = 128) -> RowGRU:
    return RowGRU(hidden)


def splits(n_val: int = 5000) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, y, x_test, y_test = fisherpack.data.load().tensors()
    x_train, y_train, x_val, y_val = fisherpack.data.split_validation(x, y, min(n_val, len(x) // 5), seed=0)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def tiny_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic MNIST-shaped splits (fisherpack.data.synthetic) of a few hundred images, for the tests."""
    x, y, x_test, y_test = fisherpack.data.synthetic(400, 200, seed=0).tensors()
    return {"train": (x[:300], y[:300]), "val": (x[300:], y[300:]), "test": (x_test, y_test)}


def run(cfg: fisherpack.PipelineConfig, hidden: int = 128, out: str | None = None) -> dict[str, float]:
    """The whole pipeline on MNIST, the file written to ``out``; returns the figures (validation
    error of the dense model and of the reloaded file, its bytes, fp32 bytes, its test error)."""
    data = splits()
    torch.manual_seed(cfg.seed)
    model = build(hidden)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    outcome = pipeline.run(cfg, *data["train"], *data["val"], model=model, metric=error)
    size, val = reload_and_measure(outcome.compressed, model, *data["val"], metric=error)
    _, test = reload_and_measure(outcome.compressed, model, *data["test"], metric=error)
    if out is not None:
        fisherpack.save(outcome.compressed, out)
    return {"val_error_dense": outcome.figures["test_error_before"], "val_error_file": val,
            "file_bytes": size, "fp32_bytes": fp32, "test_error_file": test}  # fmt: skip


CONFIG = fisherpack.PipelineConfig(
    model="examples.rowgru:build",
    epochs=6,
    rounds=4,
    final_epochs=2,
    qat_epochs=1,
    compress=fisherpack.CompressConfig(rate=0.9, criterion="obd", bits=4.0, quantize_biases=True),
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="prune and quantize a row-reading GRU on MNIST")
    p.add_argument("--epochs", type=int, default=CONFIG.epochs)
    p.add_argument("--out", default="rowgru.fpk")
    args = p.parse_args(argv)
    fig = run(CONFIG.replace(epochs=args.epochs), out=args.out)
    print(f"wrote {args.out}: {fig['file_bytes']:,} bytes ({fig['fp32_bytes'] / fig['file_bytes']:.0f}x smaller "
          f"than fp32); validation error {fig['val_error_dense']:.2%} -> {fig['val_error_file']:.2%}; "
          f"test error of the file {fig['test_error_file']:.2%}")  # fmt: skip


if __name__ == "__main__":
    main()


def tiny() -> RowGRU:
    """A very small RowGRU, for quick trials (and the tests)."""
    return RowGRU(8)
