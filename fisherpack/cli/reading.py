"""The subcommands that read a file: ``eval`` (a registry model's file on MNIST; a user's model in
usermodel.py) and ``inspect``, and the figures table they and ``reproduce`` print."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from .. import data, models
from ..errors import ConfigError
from ..fpk import container as format
from ..fpk import meta as file_meta
from ..fpk.fileio import shown
from ..loading import file_summary, load_into
from ..train import evaluate
from . import usermodel as cli_usermodel
from .common import json_text
from .common import log as _log
from .common import table as _table

__all__ = ["figures_table", "evaluate_file", "cmd_eval", "cmd_inspect"]


def figures_table(fig: dict[str, Any]) -> str:
    rows = [
        ("model", shown(str(fig.get("model", "?")))),
        ("params", f"{fig['params']:,}"),
        ("kept (non-zero)", f"{fig['nonzero_params']:,} ({fig['kept_fraction']:.2%})"),
        ("average code bits", f"{fig['avg_bits']:.2f}"),
        ("file bytes", f"{fig['file_bytes']:,}"),
        ("fp32 bytes", f"{fig['fp32_bytes']:,}"),
        ("ratio (fp32 / file)", f"{fig['ratio']:.1f}x"),
    ]
    if "stripped_bytes" in fig:  # the same file without provenance: export --strip writes it
        stripped = fig["stripped_bytes"]
        rows.append(("stripped file bytes", f"{stripped:,} ({fig['fp32_bytes'] / stripped:.1f}x; export --strip)"))
    if "test_error_before" in fig:
        rows.append(("test error before", f"{fig['test_error_before']:.2%}"))
    if "test_error" in fig:
        rows.append(("test error (from file)", f"{fig['test_error']:.2%}"))
    return _table(rows)


def evaluate_file(
    path: Path,
    data_dir: str | None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_elements: int | None = None,
) -> dict[str, Any]:
    raw = format.read_bytes(path)  # its length, not the path's size: a pipe has none
    compressed = format.decode(raw, max_elements=max_elements)
    name = file_meta.model_name(compressed.meta)
    if name not in models.MODELS:
        raise ConfigError(
            f"{path} holds a model that is not in fisherpack's registry ({name!r}); "
            "evaluate it with --model package.module:factory and --data or --data-dir"
        )
    model = load_into(models.build(name), compressed)
    x_test, y_test = test if test is not None else data.load_test(data_dir, log=_log)
    fig = {"model": name, **file_summary(raw, compressed)}
    fig["test_error"], fig["test_loss"] = evaluate(model, x_test, y_test)
    return fig


def cmd_eval(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if args.user_model or args.data:  # a user's own model or data: see cli/usermodel.py
        fig = cli_usermodel.evaluate(path, args, _log)
    else:
        fig = evaluate_file(path, args.data_dir, max_elements=args.max_elements)
    if not math.isfinite(fig["test_loss"]):  # NaN or inf logits: the argmax, and so the error, means little
        _log(f"fisherpack: warning: the model's outputs on the test set are not all finite (mean loss "
             f"{fig['test_loss']}); the file holds NaN or inf values, or its weights overflow float32")  # fmt: skip
    print(json_text(fig) if args.json else figures_table(fig))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    data = format.read_bytes(path)
    described = format.describe(data, max_elements=args.max_elements, decode_streams=True)  # checked as load checks
    if args.json:
        print(json_text(described))
        return 0
    header = f"{'tensor':<24} {'shape':<16} {'kept':>8} {'bits':<12} {'bytes':>9}  encodings"
    lines = [header, "-" * len(header)]
    for t in described["tensors"]:
        shape = "x".join(map(str, t["shape"])) or "scalar"
        kept = f"{t['kept'] / max(t['numel'], 1):.1%}" if "kept" in t else t["kind"]
        bits = ",".join(str(g["bits"]) for g in t.get("groups", [])) or t.get("dtype", "")
        encs = " ".join(f"{s['role']}:{s['encoding']}" for s in t.get("streams", []))
        lines.append(f"{shown(t['name']):<24} {shape:<16} {kept:>8} {bits:<12} {t['bytes']:>9,}  {encs}")
    lines.append(f"file: {described['file_bytes']:,} bytes, header {described['header_bytes']:,} bytes")
    lines.append(f"model: {shown(file_meta.model_name(described['meta']) or '?')}")
    lines.append(cli_usermodel.compressed_line(described["tensors"]))  # what was compressed
    print("\n".join(lines))
    return 0
