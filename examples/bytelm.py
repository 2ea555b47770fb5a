"""A byte-level transformer language model of the Python standard library's own source code:
tied input/output embedding, ``nn.MultiheadAttention`` with a causal mask, LayerNorm, a GELU MLP;
metric bits per byte. Used by benchmarks/your_models.py and runnable from the command line::

    python -m fisherpack reproduce --model examples.bytelm:build --data examples.bytelm:splits \\
        --metric bits_per_token --budget 0.05

- ``splits()``: the top-level ``*.py`` files of this Python's standard library, sorted by name and
  split **by file** (file i goes to test if i % 10 == 0, to validation if i % 10 == 1, else to
  training), cut into windows of ``CONTEXT`` bytes: ``x`` (N, T) bytes, ``y`` the next bytes.
- ``build()``: a fresh :class:`ByteLM` (two blocks, width 128: 438k parameters).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch import nn

CONTEXT = 64


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        return h + self.mlp(self.ln2(h))


class ByteLM(nn.Module):
    """(N, T) int64 bytes -> (N, T, 256) logits of the next byte; the head is the embedding."""

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, context: int = CONTEXT) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, width)
        self.pos = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256, bias=False)
        self.head.weight = self.emb.weight  # tied
        nn.init.normal_(self.emb.weight, std=0.02)  # small logits at the start (the head shares it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        h = self.emb(x) + self.pos[:t]
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.ln(h))


def build() -> ByteLM:
    return ByteLM()


def tiny() -> ByteLM:
    return ByteLM(width=16, layers=1, heads=2)


def _windows(files: list[Path], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    blob = b"".join(f.read_bytes() for f in files)[: limit + 1]
    n = (len(blob) - 1) // CONTEXT
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).long()
    x = data[: n * CONTEXT].view(n, CONTEXT)
    y = data[1 : n * CONTEXT + 1].view(n, CONTEXT)
    return x, y


def splits(train_bytes: int = 1_500_000, eval_bytes: int = 200_000) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    parts = {"test": files[0::10], "val": files[1::10], "train": [f for i, f in enumerate(files) if i % 10 > 1]}
    limits = {"train": train_bytes, "val": eval_bytes, "test": eval_bytes}
    return {name: _windows(fs, limits[name]) for name, fs in parts.items()}


def tiny_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return splits(train_bytes=16_000, eval_bytes=4_000)
