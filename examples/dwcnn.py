"""A residual CNN with BatchNorm and depthwise-separable (grouped) convolutions for MNIST, used by
benchmarks/your_models.py: (N, 1, 28, 28) images -> (N, 10) logits, 219k parameters.

``build()`` a fresh :class:`DWResNet`; ``splits()`` MNIST with a validation set held out of the
training images (see examples/rowgru.py).
"""

from __future__ import annotations

import torch
from torch import nn

from examples.rowgru import splits

__all__ = ["DWResNet", "build", "tiny", "splits"]


class SeparableBlock(nn.Module):
    """x + BN(pointwise(ReLU(BN(depthwise(x))))), the depthwise conv grouped by channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.pointwise(torch.relu(self.bn1(self.depthwise(x))))))


class DWResNet(nn.Module):
    def __init__(self, width: int = 64, blocks: int = 2, hidden: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(*(SeparableBlock(width) for _ in range(blocks)))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, groups=4, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())  # fmt: skip
        self.stage2 = nn.Sequential(*(SeparableBlock(2 * width) for _ in range(blocks)))
        self.fc = nn.Linear(2 * width * 7 * 7, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.stage1(self.stem(x)), 2)  # (N, w, 14, 14)
        x = self.stage2(self.down(x))  # (N, 2w, 7, 7)
        return self.out(torch.relu(self.fc(x.flatten(1))))


def build() -> DWResNet:
    return DWResNet(width=32, hidden=64)  # narrow convolutions (cheap on a CPU), a wider head: 219k parameters


def tiny() -> DWResNet:
    return DWResNet(width=8, blocks=1)
