"""*Your own* model, as far as fisherpack knows: a small residual network for MNIST.

It has what real networks have and the LeNets lack: BatchNorm (with its int64 batch counter), a
residual block, and a custom layer with its own parameter. fisherpack knows none of it; the
README compresses it from the command line::

    python -m examples.tinyres --out tinyres.pt     # train 1 epoch with AdamW, save weights + Adam state

What the command line can name (``--model`` / ``--data``):

- ``examples.tinyres:build``: a fresh :class:`TinyResNet`;
- ``examples.tinyres:train_batches`` / ``examples.tinyres:test_batches``: ``(x, y)`` batches of
  MNIST (fetched and cached by fisherpack on first use; ``$FISHERPACK_DATA`` sets the folder).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fisherpack
from fisherpack.train import evaluate


class ChannelScale(nn.Module):
    """A custom layer with its own parameter: a learned scale per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """(N, 1, 28, 28) images -> (N, 10) logits; 107k parameters."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block = ResidualBlock(width)
        self.scale = ChannelScale(width)
        self.fc1 = nn.Linear(width * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.stem(x))), 2)  # (N, width, 14, 14)
        x = nn.functional.max_pool2d(self.scale(self.block(x)), 2)  # (N, width, 7, 7)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def build() -> TinyResNet:
    return TinyResNet()


def train_batches(batch_size: int = 256):
    x, y, _, _ = fisherpack.data.load().tensors()
    return fisherpack.data.batches(x, y, batch_size, shuffle=True, seed=0)


def test_batches(batch_size: int = 1000):
    _, _, x, y = fisherpack.data.load().tensors()
    return fisherpack.data.batches(x, y, batch_size, shuffle=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="train TinyResNet on MNIST and save a checkpoint")
    p.add_argument("--out", default="tinyres.pt")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.AdamW(model.named_parameters(), lr=2e-3)  # names: fisherpack matches its state by name
    x, y, x_test, y_test = fisherpack.data.load().tensors()
    for epoch in range(args.epochs):
        model.train()
        for xb, yb in fisherpack.data.batches(x, y, 64, shuffle=True, seed=0, epoch=epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    error = evaluate(model, x_test, y_test)[0]
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.out)
    print(f"test error {error:.2%}; wrote {args.out}")


if __name__ == "__main__":
    main()
