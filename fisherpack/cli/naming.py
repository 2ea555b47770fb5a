"""A user's own model, checkpoint and data, named by strings (what the command line needs).

- A **spec** ``"package.module:name"`` names a callable in an importable module (``name`` may be
  dotted, e.g. ``"pkg.mod:Factory.build"``). :func:`build_model` calls it with no arguments and
  expects an ``nn.Module``; :func:`batches_from` calls it with no arguments and expects an
  iterable of ``(x, y)`` batches (``x`` a tensor or a tuple of tensors, see fisher.py). Code is
  imported only from a spec the caller passes, never from a file's metadata.
- A **checkpoint** is read with ``torch.load(weights_only=True)`` (no pickled code runs): either a
  state dict (a dict of tensors) or a dict holding one under ``state_dict``, ``model_state_dict``
  or ``model``, optionally with an optimizer state dict under ``optimizer``,
  ``optimizer_state_dict`` or ``optim`` (its Adam ``exp_avg_sq`` is a free Fisher estimate).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data
from ..errors import ConfigError, FisherpackError
from ..loading import check_state_dict

__all__ = ["resolve", "build_model", "batches_from", "read_checkpoint", "load_checkpoint", "evaluate"]

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
STATE_KEYS = ("state_dict", "model_state_dict", "model")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim")


def is_spec(text: str | None) -> bool:
    """True for ``"package.module:name"`` (registry model names have no colon)."""
    return isinstance(text, str) and bool(_SPEC.match(text))


def resolve(spec: str) -> Any:
    """The object ``"package.module:name"`` names; ConfigError (one line) if it cannot be found."""
    if not is_spec(spec):
        raise ConfigError(f"{spec!r} is not of the form package.module:name")
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} for {spec!r} ({exc}); run from the folder that holds it or install it"
        ) from None
    except Exception as exc:  # the user's module raised while importing: say what, in one line
        raise ConfigError(f"importing {module_name!r} for {spec!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def resolve_callable(spec: str) -> Any:
    """The callable ``spec`` names (e.g. a loss function), imported from the current folder too."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    fn = resolve(spec)
    if not callable(fn):
        raise ConfigError(f"{spec!r} is not callable")
    return fn


def _call(spec: str) -> Any:
    fn = resolve(spec)
    if not callable(fn):
        raise ConfigError(f"{spec!r} is not callable; name a function or class that takes no arguments")
    try:
        return fn()
    except FisherpackError:
        raise
    except Exception as exc:
        raise ConfigError(f"calling {spec}() failed: {type(exc).__name__}: {exc}") from None


def build_model(spec: str) -> nn.Module:
    """A fresh model from the factory ``spec`` names (called with no arguments)."""
    model = _call(spec)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def batches_from(spec: str, split: str = "train") -> Iterable:
    """The iterable of ``(x, y)`` batches the function ``spec`` names returns. A function that
    returns splits, ``{"train": (x, y), "val": (x, y)[, "test": (x, y)]}`` (what ``reproduce``
    takes), gives batches of 256 of ``split`` (``test`` falls back to ``val``), shuffled for train."""
    batches = _call(spec)
    if isinstance(batches, dict) and "train" in batches:
        pair = batches.get(split) or (batches.get("val") if split == "test" else None)
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
            raise ConfigError(f"{spec}()[{split!r}] must be an (x, y) pair of tensors")
        return data.batches(pair[0], pair[1], 256, shuffle=split == "train", seed=0)
    if isinstance(batches, (torch.Tensor, str, bytes, dict)) or not isinstance(batches, Iterable):
        raise ConfigError(f"{spec}() must return an iterable of (x, y) batches, got {type(batches).__name__}")
    return batches


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(model state dict, optimizer state dict or None) from a checkpoint file (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FisherpackError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FisherpackError(
            f"{path} is not a checkpoint torch.load(weights_only=True) can read ({reason[:200]}); "
            "save a state_dict with torch.save"
        ) from None
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        state = next((obj[k] for k in STATE_KEYS if _is_state_dict(obj.get(k))), None)
        if state is not None:
            optimizer = next((obj[k] for k in OPTIMIZER_KEYS if isinstance(obj.get(k), dict)), None)
            return state, optimizer
    raise FisherpackError(
        f"{path} holds no state dict: save model.state_dict(), or a dict with it under one of "
        f"{', '.join(STATE_KEYS)} (and the optimizer's under {OPTIMIZER_KEYS[0]})"
    )


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict | None:
    """Load a checkpoint's weights into ``model`` (ConfigError naming the first mismatching
    tensor); returns the optimizer state dict it holds, or None."""
    state, optimizer = read_checkpoint(path)
    check_state_dict(model, state, f"checkpoint {Path(path).name}")
    model.load_state_dict(state)
    return optimizer


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable) -> dict[str, float]:
    """Classification error and mean cross-entropy of ``model`` (eval mode) over ``(x, y)``
    batches with class indices ``y``; ConfigError if the outputs are not (n, classes) logits."""
    was_training = model.training
    model.eval()
    wrong = count = 0
    loss = 0.0
    try:
        for x, y in batches:
            out = model(*x) if isinstance(x, (tuple, list)) else model(x)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or y.ndim != 1 or len(out) != len(y):
                raise ConfigError("eval measures classifiers: the model must return (n, classes) logits for n labels")
            wrong += int((out.argmax(1) != y).sum())
            loss += float(nn.functional.cross_entropy(out.float(), y, reduction="sum"))
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("the data source yielded no samples to evaluate on")
    return {"test_error": wrong / count, "test_loss": loss / count, "test_samples": count}
