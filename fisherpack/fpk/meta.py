"""What a file's ``meta`` holds, each fact once, and the little of it that loading needs.

The format lets ``meta`` be any JSON object (docs/FORMAT.md, section 3). fisherpack writes:

- ``fisherpack``: the version that wrote the file;
- ``config``: the compress config of a one-shot ``compress``, or ``pipeline``: the whole pipeline
  config of ``reproduce`` and ``pipeline.run``, which holds the compress config, the model and the
  seed (so they are not repeated beside it);
- ``model``: the model's name, where no pipeline config names it;
- ``original``: ``{"params", "fp32_bytes"}`` of the model before structured pruning made it
  smaller (only then); loading reshapes the model to the file's shapes when it is there.

A *stripped* file (``fisherpack export FILE --strip OUT``) keeps only ``model`` and ``original``:
what a deployment needs to load it and to state its ratio honestly; every tensor byte is as it was.
"""

from __future__ import annotations

from typing import Any


def compress_config(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded compress config (a dict), or None if the file records none."""
    pipeline = meta.get("pipeline")
    config = pipeline.get("compress") if isinstance(pipeline, dict) else meta.get("config")
    return config if isinstance(config, dict) else None


def model_name(meta: dict[str, Any]) -> Any:
    """The recorded model name (whatever JSON value is there), or None."""
    pipeline = meta.get("pipeline")
    if "model" not in meta and isinstance(pipeline, dict):
        return pipeline.get("model")
    return meta.get("model")


def shrunk(meta: dict[str, Any]) -> bool:
    """True if the file holds a model that structured pruning made smaller than it was built."""
    pipeline = meta.get("pipeline")
    structured = pipeline.get("structured") if isinstance(pipeline, dict) else None
    return isinstance(meta.get("original"), dict) or (type(structured) in (int, float) and structured > 0)


def with_entropy(meta: dict[str, Any], entropy: bool) -> dict[str, Any]:
    """``meta`` with every compress config it records saying ``entropy`` (a new dict; the
    caller's is untouched)."""
    out = dict(meta)
    if isinstance(meta.get("config"), dict):
        out["config"] = {**meta["config"], "entropy": entropy}
    if isinstance(meta.get("pipeline"), dict) and isinstance(meta["pipeline"].get("compress"), dict):
        out["pipeline"] = {**meta["pipeline"], "compress": {**meta["pipeline"]["compress"], "entropy": entropy}}
    return out


def stripped(meta: dict[str, Any]) -> dict[str, Any]:
    """The meta of the stripped file: the model's name and original size, nothing else."""
    out = {"model": model_name(meta), "original": meta.get("original")}
    return {k: v for k, v in out.items() if v is not None}
