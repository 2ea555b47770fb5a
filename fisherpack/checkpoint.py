"""Checkpoints: a run's resumable state, and the training checkpoints of ``fisherpack train``.

A run's state is a dict of tensors, state dicts and strings written atomically with ``torch.save``
and read back with ``torch.load(weights_only=True)`` (no pickle of code); it records the run's
config as JSON and a fingerprint of its data, and a checkpoint of other settings or data is
refused rather than silently resumed. Under torch.distributed rank 0 reads and writes and hands
the bytes to the others.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from . import dist, models
from .config import PipelineConfig
from .errors import FisherpackError
from .fpk.fileio import atomic_write_bytes

__all__ = [
    "config_text",
    "fingerprint",
    "save_state",
    "load_state",
    "load_training_checkpoint",
    "restore_checkpoint",
    "training_batch_size",
]


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes: names a data set or a model state."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


_SEAL = b"FPKSHA256"  # the torch.save bytes are followed by this and their SHA-256


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically, sealed with the SHA-256 of its bytes (checked by :func:`load_state`)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    atomic_write_bytes(path, blob + _SEAL + hashlib.sha256(blob).digest())


def _unseal(path: Path, blob: bytes) -> bytes:
    body, seal, digest = blob[: -len(_SEAL) - 32], blob[-len(_SEAL) - 32 : -32], blob[-32:]
    if seal != _SEAL or hashlib.sha256(body).digest() != digest:  # a flipped bit or an edit of the file
        raise FisherpackError(
            f"checkpoint {path} is unreadable: damaged or edited (checksum mismatch); delete it to start over"
        )
    return body


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.exists() else None
    except OSError as exc:
        raise FisherpackError(f"checkpoint {path} is unreadable ({exc.strerror}); delete it to start over") from None


def config_text(cfg: Any) -> str:
    """The config as a checkpoint records it, and as :func:`load_state` compares it."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def load_state(path: Path, cfg: PipelineConfig, data: str, what: str = "data") -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one; FisherpackError if it belongs to another run."""
    blob = dist.from_rank0(lambda: _read_bytes(path), f"reading {path}")
    if blob is None:
        return None
    blob = _unseal(path, blob)
    try:
        state = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as exc:  # a damaged checkpoint is not worth a traceback
        raise FisherpackError(
            f"checkpoint {path} is unreadable ({exc.__class__.__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("config") != config_text(cfg):
        raise FisherpackError(
            f"checkpoint {path} belongs to a run with other settings; delete it, or rerun with the same settings"
        )
    if state.get("data") != data:
        raise FisherpackError(f"checkpoint {path} belongs to a run with other {what}; delete it to start over")
    return state


def training_checkpoint(cfg: PipelineConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bytes:
    """The bytes of a ``fisherpack train`` checkpoint (read back by :func:`load_training_checkpoint`):
    the registry model's name, its state dict, the Adam state and the config, no pickled code."""
    buf = io.BytesIO()
    torch.save(
        {
            "fisherpack_checkpoint": 1,
            "model": cfg.model,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": json.dumps(cfg.to_dict()),
        },
        buf,
    )
    return buf.getvalue()


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``fisherpack train`` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if path.is_dir():
        raise FisherpackError(f"checkpoint {path} is a directory; give the file `fisherpack train` wrote")
    if not path.is_file():
        raise FisherpackError(f"checkpoint {path} does not exist; write one with `fisherpack train --out {path}`")
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception:
        raise FisherpackError(
            f"{path} is not a readable PyTorch checkpoint; write one with `fisherpack train`"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("fisherpack_checkpoint") != 1 or ckpt.get("model") not in models.MODELS:
        raise FisherpackError(f"{path} is not a checkpoint written by `fisherpack train`")
    return ckpt


def _detail(exc: Exception) -> str:
    """The informative line of a load_state_dict error (its first line only names the class)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0] if lines else ""
    return detail if len(detail) <= 160 else detail[:157] + "..."


def restore_checkpoint(ckpt: dict[str, Any], lr: float = 1e-3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and its Adam optimizer (state included, learning rate ``lr``) of a checkpoint read by
    :func:`load_training_checkpoint`."""
    model = models.build(ckpt["model"])
    try:
        model.load_state_dict(ckpt["state_dict"])
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        message = _detail(exc) or exc.__class__.__name__
        raise FisherpackError(f"the checkpoint does not match model {ckpt['model']!r}: {message}") from None
    return model, optimizer


def training_batch_size(ckpt: dict[str, Any]) -> int:
    """The mini-batch size the checkpoint's model was trained with (Adam's state scales with it)."""
    try:
        return int(json.loads(ckpt["config"])["batch_size"])
    except (KeyError, TypeError, ValueError):
        raise FisherpackError(
            "the checkpoint does not say its training batch size; write it with `fisherpack train`"
        ) from None
