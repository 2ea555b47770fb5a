"""``fisherpack reproduce --model package.module:factory --data package.module:splits``: the whole
pipeline on your own model, and the error-budget search; cli.py hands over when --model names code.

- ``--data`` names a function returning ``{"train": (x, y), "val": (x, y)}`` (and optionally
  ``"test"``): tensors with the samples along dim 0. Training and the Fisher use ``train``; the
  budget and the figures use ``val``; ``test`` is measured once, from the written file.
- ``--checkpoint CKPT`` starts from your trained weights (no training; a data Fisher by default).
- ``--loss PKG.MOD:FN`` (a mini-batch mean, default cross-entropy on any output shape) and
  ``--metric error|bits_per_token|mse|PKG.MOD:FN`` (default error; see losses.py).
- ``--budget B`` (``0.05`` absolute, ``5%`` relative, in the metric): search rate and width for
  the smallest file within B of the dense model on ``val``, printing every point tried.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .. import budget as budget_mod
from .. import losses, pipeline
from ..bench import environment
from ..config import CompressConfig, PipelineConfig
from ..errors import ConfigError, DataError, FisherpackError
from ..fpk import container as format
from ..fpk.fileio import atomic_write_bytes, check_writable
from ..loading import file_summary
from ..persample import FallbackNotice
from ..train import measure
from . import naming as usermodel
from .common import given, json_text, pipeline_changes, table

__all__ = ["add_flags", "reproduce", "splits_from", "metric_from", "check_fits", "NEEDS_DATA"]

SPLITS = ("train", "val", "test")
NEEDS_DATA = "your own model needs its data: --data package.module:function (train/val splits)"


def add_flags(q: argparse.ArgumentParser, budget: bool = True) -> None:
    g = q.add_argument_group("your own model (--model package.module:factory)")
    g.add_argument("--data", metavar="PKG.MOD:FN", help='function returning {"train": (x, y), "val": (x, y)[, "test"]}')
    g.add_argument("--checkpoint", metavar="CKPT", help="start from these trained weights (no training)")
    g.add_argument("--loss", metavar="PKG.MOD:FN", help="mini-batch mean loss(output, target) (default cross-entropy)")
    g.add_argument("--metric", help="error | bits_per_token | mse | PKG.MOD:FN (default error; lower is better)")
    if budget:
        g.add_argument(
            "--budget", help="smallest file within this much worse on val: 0.05 (absolute) or 5%% (relative)"
        )


def splits_from(spec: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The checked splits the data function ``spec`` returns (DataError in one line otherwise)."""
    got = usermodel.resolve_callable(spec)()
    if not isinstance(got, dict) or "train" not in got or "val" not in got:
        raise DataError(f'{spec}() must return {{"train": (x, y), "val": (x, y)}} (and optionally "test")')
    out = {}
    for name in SPLITS:
        pair = got.get(name)
        if pair is None:
            continue
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)
        if not ok or pair[0].ndim == 0 or len(pair[0]) != len(pair[1]) or len(pair[0]) == 0:
            raise DataError(f"{spec}()[{name!r}] must be a non-empty (x, y) pair of tensors of equal length")
        out[name] = (pair[0], pair[1])
    return out


def check_fits(model_spec: str, data_spec: str, model: torch.nn.Module, splits: dict, loss=None, metric=None) -> None:
    """DataError in one line, before any work, unless the model runs on the first two samples of
    every split and the loss (default cross-entropy) and the metric (default error) take its output."""
    model.eval()  # a fresh model built for the check: BatchNorm's statistics stay as they were
    for name, (x, y) in splits.items():
        what = f"{model_spec} on {data_spec}()[{name!r}]"
        try:
            with torch.no_grad():
                out = model(x[:2])
            (loss or losses.cross_entropy)(out, y[:2])
            (metric or losses.error)(out, y[:2])
        except FisherpackError as exc:
            raise DataError(f"{what}: {exc}") from None
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise DataError(f"{what} failed: {type(exc).__name__}: {reason}") from None


def metric_from(name: str | None) -> losses.Metric:
    """The metric ``--metric`` names (error by default); ConfigError in one line otherwise."""
    if name is None:
        return losses.error
    if name in losses.METRICS:
        return losses.METRICS[name]
    if usermodel.is_spec(name):
        return usermodel.resolve_callable(name)
    raise ConfigError(f"--metric wants one of {', '.join(losses.METRICS)} or package.module:function, got {name!r}")


def _config(args: argparse.Namespace, compress_config: Callable[[argparse.Namespace, CompressConfig], CompressConfig]):
    base = PipelineConfig(model=args.model, fisher="empirical" if args.checkpoint else "adam")
    changes: dict[str, Any] = {"compress": compress_config(args, base.compress)}
    if args.checkpoint:
        changes["epochs"] = 0
    changes.update(pipeline_changes(args))
    return base.replace(**changes)


def reproduce(args: argparse.Namespace, compress_config: Callable, log: Callable[[str], None]) -> int:
    with notes():
        return _reproduce(args, compress_config, log)


def _reproduce(args: argparse.Namespace, compress_config: Callable, log: Callable[[str], None]) -> int:
    if not args.data:
        raise ConfigError(NEEDS_DATA)
    cfg = _config(args, compress_config)
    out = Path(args.out or f"{args.model.rpartition(':')[2]}.fpk")
    check_writable(out)
    check_writable(Path(f"{out}.json"))
    data = splits_from(args.data)
    loss = usermodel.resolve_callable(args.loss) if args.loss else None
    metric = metric_from(args.metric)

    def build() -> torch.nn.Module:
        torch.manual_seed(cfg.seed)
        model = usermodel.build_model(args.model)
        if args.checkpoint:
            usermodel.load_checkpoint(model, args.checkpoint)
        return model

    check_fits(args.model, args.data, build(), data, loss, metric)  # one line, before any work
    if args.budget:
        budget = budget_mod.Budget.parse(args.budget)
        log(f"searching rate and width for the smallest file within {budget} of the dense model on val")
        best, tried, dense, compressed = budget_mod.pipeline_search(
            cfg, build, data["train"], data["val"], budget, loss=loss, metric=metric,
            on_point=lambda p: log(f"  rate {p.rate:.3f} bits {p.bits:g}: {p.file_bytes:,} bytes, "
                                   f"val {p.value:.4f}{'' if p.within else '  (over budget)'}"),
        )  # fmt: skip
        if best is None:
            raise ConfigError(f"no point tried is within {budget} of the dense model's {dense:.4f}; allow more")
        cfg = cfg.replace(compress=cfg.compress.replace(rate=best.rate, bits=best.bits))
        points = [vars(p) for p in tried]
    else:
        model = build()
        outcome = pipeline.run(cfg, *data["train"], *data["val"], model=model, loss=loss, metric=metric,
                               checkpoint=Path(f"{out}.ckpt"))  # fmt: skip
        compressed, dense, points = outcome.compressed, outcome.figures["test_error_before"], []
    blob = format.encode(compressed, entropy=cfg.compress.entropy)
    atomic_write_bytes(out, blob)
    Path(f"{out}.ckpt").unlink(missing_ok=True)
    fig = {"model": args.model, "metric": args.metric or "error", "val_dense": dense, "budget": args.budget}
    like = usermodel.build_model(args.model)
    for split in ("val", "test"):
        if split in data:
            fig[f"{split}_file"] = budget_mod.reload_and_measure(compressed, like, *data[split], metric=metric)[1]
    fig.update(file_summary(blob, format.decode(blob)), points=points, config=cfg.to_dict(),
               environment=environment.record(seed=cfg.seed))  # fmt: skip
    atomic_write_bytes(Path(f"{out}.json"), (json_text(fig, indent=2) + "\n").encode())
    rows = [("model", args.model), ("file bytes", f"{len(blob):,}"), ("fp32 bytes", f"{fig['fp32_bytes']:,}")]
    rows += [("ratio (fp32 / file)", f"{fig['ratio']:.1f}x"), ("stripped file bytes", f"{fig['stripped_bytes']:,}")]
    rows += [(f"val {fig['metric']} dense", f"{dense:.4f}")]
    rows += [
        (f"{s} {fig['metric']} (from file)", f"{fig[f'{s}_file']:.4f}") for s in ("val", "test") if f"{s}_file" in fig
    ]
    print(table(rows))
    print(f"wrote {out} and {out}.json", file=sys.stdout)
    return 0


@contextlib.contextmanager
def notes() -> Iterator[None]:
    """Library notices (e.g. the Fisher's exact fallback) as one ``fisherpack: note:`` line each."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", FallbackNotice)
        shown = warnings.showwarning

        def show(message, category, *rest) -> None:  # noqa: ANN001
            if issubclass(category, FallbackNotice):
                print(f"fisherpack: note: {message}", file=sys.stderr)
            else:
                shown(message, category, *rest)

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown


def sensitivity(args: argparse.Namespace, render: Callable[[dict[str, Any]], str]) -> int:
    """``fisherpack sensitivity --model PKG.MOD:FACTORY --data PKG.MOD:SPLITS [CKPT]``: per layer, the
    Fisher's predicted loss increase against the measured one on ``val`` (see sensitivity.py).
    Without a checkpoint the model is trained here first (Adam), so the Adam Fisher is compared too."""
    from ..bench import sensitivity as sens

    with notes():
        return _sensitivity(args, render, sens)


def _sensitivity(args: argparse.Namespace, render: Callable[[dict[str, Any]], str], sens: Any) -> int:
    if not args.data:
        raise ConfigError(NEEDS_DATA)
    data = splits_from(args.data)
    (x_fit, y_fit), (x_val, y_val) = data["train"], data["val"]
    seed = args.seed if args.seed is not None else 0
    check_fits(args.model, args.data, usermodel.build_model(args.model), data)  # one line, before any work
    torch.manual_seed(seed)
    model = usermodel.build_model(args.model)
    optimizer, batch_size = None, None
    if args.checkpoint:
        usermodel.load_checkpoint(model, args.checkpoint)
    else:
        cfg = PipelineConfig(model=args.model, seed=seed, epochs=args.epochs if args.epochs is not None else 3)
        trained = pipeline.run(cfg, x_fit, y_fit, x_val, y_val, model=model, metric=losses.error, until="train")
        optimizer, batch_size = trained.optimizer, cfg.batch_size
    flags = given(args, *sens.FLAGS)
    if optimizer is None:  # no Adam state to rank by
        flags["rank_by"] = "empirical"
    cfg = sens.SensitivityConfig(seed=seed, **flags)
    fishers = sens.estimate(model, x_fit, y_fit, cfg, optimizer=optimizer, batch_size=batch_size)
    report = sens.analyse(model, fishers, x_val, y_val, cfg)
    result = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "validation": {"images": len(x_val), "seed": seed, "held_out_from_training": True},
        "validation_error": measure(model, x_val, y_val, losses.error),
        "config": {**cfg.__dict__, "adam_batch_size": batch_size},
        "environment": environment.record(seed=seed),
        **report.to_dict(),
    }
    print(json_text(result) if args.json else render(result))
    return 0
