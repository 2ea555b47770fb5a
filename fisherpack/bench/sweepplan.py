"""The points of a sweep: what ``fisherpack sweep`` measures for one subject, and their keys.

A point is a JSON spec such as ``{"sweep": "prune", "model": "lenet5", "seed": 0, "method":
"obd-adam", "scope": "global", "rate": 0.9, "finetune_epochs": 0.5, "defaults": "2bc91ff6c2"}``;
its canonical JSON (:func:`key`) is its identity in the results. ``defaults`` is a hash of the
subject's settings (:func:`settings_id`); a subject's ``tags`` (subject.py) join every key.
sweep.py measures the points.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .. import pipeline
from ..config import PipelineConfig
from .subject import Subject

__all__ = [
    "PRUNE_METHODS", "QUANT_SCHEMES", "PIPELINE_METHODS", "key", "settings", "settings_id", "pipeline_config",
    "pending", "plan",
]  # fmt: skip

PRUNE_METHODS = {  # name -> (criterion, Fisher source)
    "fisher-adam": ("fisher", "adam"),
    "fisher-empirical": ("fisher", "empirical"),
    "fisher-sampled": ("fisher", "sampled"),
    "obd-adam": ("obd", "adam"),
    "obd-empirical": ("obd", "empirical"),
    "two_stage-adam": ("two_stage", "adam"),
    "magnitude": ("magnitude", None),
    "random": ("random", None),
}
QUANT_SCHEMES = ("quantile", "waterfill", "waterfill-g4", "uniform", "kmeans")
PIPELINE_METHODS = ("fisherpack", "magnitude-uniform")


def key(spec: dict[str, Any]) -> str:
    """The canonical JSON of a point's spec: its identity in the results."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _defaults(model: str | PipelineConfig) -> PipelineConfig:
    """A registry name stands for its ``pipeline.default_config``."""
    return pipeline.default_config(model) if isinstance(model, str) else model


def settings(model: str | PipelineConfig) -> dict[str, Any]:
    """The defaults a point depends on: a subject's ``defaults`` (a registry name: its
    ``pipeline.default_config``) without the seed and the pruning rate and bits (every pipeline
    point sets its own). The sweep's JSON records them under ``settings``, keyed by
    :func:`settings_id`, so each point's ``defaults`` says what it used."""
    d = _defaults(model).to_dict()
    d.pop("seed")
    d["compress"] = {k: v for k, v in d["compress"].items() if k not in ("rate", "bits")}
    return d


def settings_id(model: str | PipelineConfig) -> str:
    """A short hash of :func:`settings`. Part of every point's key, so a change of those defaults
    makes new points; a change of the default rate or bits (chosen from the sweep itself) does not."""
    return hashlib.sha256(json.dumps(settings(model), sort_keys=True).encode()).hexdigest()[:10]


def pipeline_config(spec: dict[str, Any], defaults: PipelineConfig | None = None) -> PipelineConfig:
    """The pipeline settings of a ``pipeline`` point: its subject's ``defaults`` (a registry
    model's by default), or the same schedule with magnitude pruning and uniform fixed point (the
    fair baseline)."""
    base = (defaults or pipeline.default_config(spec["model"])).replace(seed=spec["seed"])
    base = base.replace(**{k: spec[k] for k in ("rounds", "final_epochs", "qat_epochs") if k in spec})
    if "train_epochs" in spec:
        base = base.replace(epochs=spec["train_epochs"])
    changes = {"rate": spec["rate"], "bits": float(spec["bits"])}
    if spec["method"] == "magnitude-uniform":  # nothing ranked by Fisher: no structured pruning either
        changes.update(criterion="magnitude", allocation="uniform", groups=1, quantize_biases=False)
        base = base.replace(structured=0.0)
    return base.replace(compress=base.compress.replace(**changes))


def pending(specs: list[dict[str, Any]], results: dict[str, Any]) -> list[dict[str, Any]]:
    """The specs whose results are not in ``results`` yet, in order."""
    return [s for s in specs if key(s) not in results]


PRUNE_RATES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
QUANT_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
PIPELINE_POINTS = {  # (rate, average bits) per model, spanning the size/error front
    "lenet5": ((0.95, 4), (0.98, 4), (0.99, 4), (0.995, 4)),
    "lenet300": ((0.9, 4), (0.95, 4), (0.97, 4), (0.98, 4)),
}
OTHER_POINTS = ((0.8, 4), (0.9, 4), (0.95, 4))  # any other model's front, until its sweep shows where to look
FINETUNE = {"lenet5": 0.25, "lenet300": 1.0}  # epochs of fine-tuning per prune or quant point
QUICK_TRAIN_EPOCHS = {"lenet5": 2, "lenet300": 6}


def plan(subject: Subject | str, seeds: tuple[int, ...] = (0, 1, 2), quick: bool = False) -> list[dict[str, Any]]:
    """Every point of the sweep of one subject (a registry name: that model on MNIST); ``quick`` is
    a thin slice that runs in minutes. A model that arrives trained (from a checkpoint) has no Adam
    state, so the pruning methods that read their Fisher from it are left out."""
    model, defaults, tags = (subject, _defaults(subject), {}) if isinstance(subject, str) else (
        subject.name, subject.defaults, subject.tags)  # fmt: skip
    rates = (0.5, 0.9, 0.98) if quick else PRUNE_RATES
    scopes = ("global",) if quick else ("global", "layer")
    bits = (2, 4, 6) if quick else QUANT_BITS
    ft = 0.1 if quick else FINETUNE.get(model, 1.0)
    points = PIPELINE_POINTS.get(model, OTHER_POINTS)
    points = points[1:2] if quick else points
    seeds = seeds[:1] if quick else seeds
    methods = [m for m, (_, source) in PRUNE_METHODS.items() if source != "adam" or defaults.epochs > 0]
    specs: list[dict[str, Any]] = []
    for seed in seeds:
        common = {"model": model, "seed": seed, "defaults": settings_id(defaults), **tags}
        if quick and defaults.epochs > 0:  # a base model trained for a few epochs only
            common["train_epochs"] = QUICK_TRAIN_EPOCHS.get(model, 2)
        for method in methods:
            for scope in scopes:
                for rate in rates:
                    specs.append(
                        {
                            "sweep": "prune",
                            **common,
                            "method": method,
                            "scope": scope,
                            "rate": rate,
                            "finetune_epochs": ft,
                        }
                    )
        for scheme in QUANT_SCHEMES:
            for b in bits:
                specs.append({"sweep": "quant", **common, "scheme": scheme, "bits": b, "qat_epochs": ft})
        for method in PIPELINE_METHODS:
            for rate, b in points:
                spec = {"sweep": "pipeline", **common, "method": method, "rate": rate, "bits": b}
                if quick:
                    spec.update(rounds=2, final_epochs=1, qat_epochs=1)
                specs.append(spec)
    return specs
