"""``fisherpack sweep``'s subjects and its terminal summary (the command itself is in bench.py).

Every name given to ``--model`` becomes one :class:`~fisherpack.bench.subject.Subject`, the same
way for all: a registry name (``lenet5``) builds with ``models.build`` and starts from
``pipeline.default_config``; ``package.module:factory`` builds with that factory and starts from
``PipelineConfig()``, what ``reproduce`` gives a model it does not know. The data is MNIST (the
registry's, ``--data-dir``) unless ``--data package.module:splits`` gives train/val[/test];
``--checkpoint`` gives trained weights (no training: ``epochs=0``, a data Fisher), ``--loss`` and
``--metric`` what the points train with and measure. Whatever of these is not the registry's
default goes into every point's key (subject.py), so results never mix.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from .. import data, models, pipeline
from ..bench import subject as subject_mod
from ..bench import sweep
from ..checkpoint import fingerprint
from ..config import PipelineConfig
from ..errors import ConfigError
from . import anymodel
from . import naming as usermodel
from .common import log

__all__ = ["is_user_model", "subjects", "summary"]


def is_user_model(name: str) -> bool:
    """True for ``package.module:factory`` (registry names have no colon)."""
    return ":" in name


def _loaded(factory, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = factory()
    model.load_state_dict(state)
    return model


def subjects(names: list[str], args: argparse.Namespace) -> list[subject_mod.Subject]:
    """The subjects of ``names`` (see module doc); one-line errors for every mistake, before any work."""
    if any(is_user_model(n) for n in names) and not args.data:
        raise ConfigError(anymodel.NEEDS_DATA)
    factories = {}
    for name in names:  # a bad spec or factory fails here, before the data is loaded
        factories[name] = functools.partial(usermodel.build_model if is_user_model(name) else models.build, name)
        if is_user_model(name):
            usermodel.resolve_callable(name)  # the current folder on sys.path, as for --data
        factories[name]()
    loss = usermodel.resolve_callable(args.loss) if args.loss else None
    metric = anymodel.metric_from(args.metric)
    if args.data:
        splits = anymodel.splits_from(args.data)
    else:
        splits = subject_mod.mnist_splits(data.load(args.data_dir, log=log), sweep.VAL_SIZE)
    tags = {}
    if args.data:
        tags["data"] = subject_mod.data_fingerprint(*(splits.get(s) for s in anymodel.SPLITS))[:16]
    if args.loss:
        tags["loss"] = args.loss
    if args.metric not in (None, "error"):
        tags["metric"] = args.metric
    for name, factory in factories.items():
        anymodel.check_fits(name, args.data or "mnist", factory(), splits, loss, metric)
    out = []
    for name, factory in factories.items():
        defaults = PipelineConfig(model=name) if is_user_model(name) else pipeline.default_config(name)
        build, own = factory, dict(tags)
        if args.checkpoint:
            model = factory()
            usermodel.load_checkpoint(model, args.checkpoint)  # one line naming the first mismatch
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            build = functools.partial(_loaded, factory, state)
            defaults = defaults.replace(epochs=0, fisher="empirical")  # trained already; no Adam state
            own["checkpoint"] = fingerprint(*state.values())[:16]
        out.append(
            subject_mod.Subject(name, build, defaults, **splits, loss=loss, metric=metric,
                                metric_name=args.metric or "error", tags=own)
        )  # fmt: skip
    return out


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.4f}" if values else "-"


def summary(results: dict[str, Any], name: str) -> str:
    """The terminal table of a finished sweep: the dense model, the whole-pipeline files, and at
    each rate (each width) the best pruning method after fine-tuning (quantization scheme after
    QAT), by the mean of the metric on validation over the seeds."""
    metric = results.get("metric", "error")
    bases = list(results.get("bases", {}).values())
    specs = [(json.loads(k), r) for k, r in results["points"].items()]
    lines = [f"{name}: {metric} (lower is better), mean over seeds"]
    lines.append(f"  dense model: val {_mean([b['val_error'] for b in bases])}, "
                 f"test {_mean([b['test_error'] for b in bases if 'test_error' in b])}")  # fmt: skip
    front: dict[tuple, list[dict]] = defaultdict(list)
    for s, r in specs:
        if s["sweep"] == "pipeline":
            front[(s["method"], s["rate"], s["bits"])].append(r)
    if front:
        lines.append(f"  {'pipeline':<18} {'pruned':>7} {'bits':>4} {'file bytes':>11} {'ratio':>7} "
                     f"{'val':>8} {'test':>8}")  # fmt: skip
    for (method, rate, bits), rs in sorted(front.items()):
        nbytes, ratio = np.mean([r["file_bytes"] for r in rs]), np.mean([r["ratio"] for r in rs])
        val, test = _mean([r["val_error"] for r in rs]), _mean([r["test_error"] for r in rs if "test_error" in r])
        lines.append(f"  {method:<18} {rate:>7.1%} {bits:>4} {nbytes:>11,.0f} {ratio:>6.1f}x {val:>8} {test:>8}")
    for kind, what, field, stage in (("prune", "rate", "method", "finetuned"), ("quant", "bits", "scheme", "qat")):
        cells: dict[tuple, list[float]] = defaultdict(list)
        for s, r in specs:
            if s["sweep"] == kind and stage in r and s.get("scope", "global") == "global":
                cells[(s[what], s[field])].append(r[stage]["val_error"])
        for x in sorted({x for x, _ in cells}):
            best = min((np.mean(v), f) for (xx, f), v in cells.items() if xx == x)
            lines.append(f"  best {kind} at {what} {x:g} ({stage}): {best[1]}, val {best[0]:.4f}")
    return "\n".join(lines)
