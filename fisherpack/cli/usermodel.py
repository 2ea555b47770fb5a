"""Command-line parts for users' own models and for export; cli.py wires them in.

- ``fisherpack compress --model package.module:factory --checkpoint CKPT [--data package.module:fn |
  --data-dir D]``: one-shot prune + quantize of any model (see usermodel.py for what a checkpoint
  may hold). The Fisher comes from the checkpoint's Adam state if it has one, else from the data.
- ``fisherpack eval FILE --model package.module:factory (--data package.module:fn | --data-dir D)``.
- ``fisherpack export FILE [--safetensors OUT] [--onnx OUT]``.
- ``--include`` / ``--exclude`` / ``--override`` flags for every command that compresses.

Model code is imported only when its spec is given on the command line (never from a file's
metadata). The current folder is put last on ``sys.path`` for that, so ``--model
examples.tinyres:build`` works from the repository root while installed packages keep precedence.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .. import data, export, models
from .. import fisher as fisher_mod
from ..compression import compress
from ..config import CompressConfig
from ..errors import ConfigError
from ..fpk import container as format
from ..fpk import header
from ..fpk import meta as file_meta
from ..fpk.fileio import atomic_write_bytes, check_writable, shown
from ..loading import file_summary, load_into
from . import naming as usermodel
from .common import add_force_flag, out_path

__all__ = ["add_layer_flags", "layer_changes", "add_model_flags", "add_export_command", "compress_user", "evaluate"]


def _override(text: str) -> tuple[str, dict[str, float]]:
    """``PATTERN:rate=R,bits=B`` -> (pattern, settings); values are checked by CompressConfig."""
    pattern, sep, body = text.rpartition(":")
    try:
        if not sep or not pattern:
            raise ValueError
        settings = {}
        for item in body.split(","):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError
            settings[key.strip()] = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--override wants PATTERN:rate=R,bits=B, got {text!r}") from None
    return pattern, settings


def add_layer_flags(group: Any) -> None:
    group.add_argument("--include", action="append", metavar="PATTERN", help="compress only matching parameters")
    group.add_argument("--exclude", action="append", metavar="PATTERN", help="store matching parameters losslessly")
    group.add_argument(
        "--override",
        action="append",
        type=_override,
        metavar="PATTERN:KEY=V",
        help="per-layer setting, e.g. 'conv1.weight:bits=8' or 'fc*:rate=0.5,bits=4' (repeatable)",
    )


def layer_changes(args: argparse.Namespace) -> dict[str, Any]:
    """CompressConfig changes from the flags of :func:`add_layer_flags`."""
    changes: dict[str, Any] = {}
    for key in ("include", "exclude", "override"):
        if getattr(args, key, None):
            changes["overrides" if key == "override" else key] = tuple(getattr(args, key))
    return changes


def add_model_flags(p: argparse.ArgumentParser, *, checkpoint: bool = False) -> None:
    g = p.add_argument_group("your own model")
    g.add_argument("--model", dest="user_model", metavar="PKG.MOD:FACTORY", help="factory of your model")
    g.add_argument("--data", metavar="PKG.MOD:FN", help="function returning an iterable of (x, y) batches")
    g.add_argument(
        "--loss",
        metavar="PKG.MOD:FN",
        help="summed per-sample loss(output, target) for the Fisher "
        "(default: cross-entropy for integer labels of any output shape, squared error for float targets)",
    )
    if checkpoint:
        g.add_argument("--checkpoint", dest="checkpoint_flag", metavar="CKPT", help="state_dict file of your model")
        g.add_argument("--fisher-samples", type=int, help="samples for a data Fisher (default 1000)")


def _note(message: str) -> None:
    print(f"fisherpack: note: {message}", file=sys.stderr)


def _import_path() -> None:
    """The current folder goes last on sys.path: a local file named like an installed package (an
    ``onnxscript.py``) must not replace it in fisherpack's own later imports."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)


def _model(spec: str) -> torch.nn.Module:
    if not usermodel.is_spec(spec):
        raise ConfigError(f"--model wants package.module:factory for your own model, got {spec!r}")
    _import_path()
    return usermodel.build_model(spec)


def _batches(args: argparse.Namespace, split: str, log) -> Any:
    """Batches from --data, or the MNIST-format split of --data-dir; None without either."""
    if args.data:
        _import_path()
        return usermodel.batches_from(args.data, split)
    if args.data_dir and split == "test":  # eval and export need no training images
        return data.batches(*data.load_test(args.data_dir, log=log), 256, shuffle=False)
    if args.data_dir:
        x_train, y_train, _, _ = data.load(args.data_dir, log=log).tensors()
        return data.batches(x_train, y_train, 256, shuffle=True, seed=0)
    return None


def compress_user(args: argparse.Namespace, config: CompressConfig, log) -> tuple[Any, Path]:
    """``fisherpack compress --model ...``: returns (Compressed, output path)."""
    ckpt = Path(args.checkpoint_flag or args.checkpoint or "")
    if not args.checkpoint_flag and not args.checkpoint:
        raise ConfigError("give the checkpoint of your model: --checkpoint CKPT")
    out = out_path(args.out, ckpt.with_suffix(".fpk"))
    check_writable(out, overwrite=args.force, inputs=[ckpt])
    model = _model(args.user_model)
    optimizer = usermodel.load_checkpoint(model, ckpt)
    needs = config.needs_fisher()
    source = args.fisher or ("adam" if optimizer is not None else "empirical")
    fisher = None
    if needs and source == "adam":
        if optimizer is None:
            raise ConfigError(f"{ckpt} has no optimizer state for --fisher adam; give --data or --data-dir instead")
        fisher = fisher_mod.estimate("adam", model, optimizer=optimizer)
    elif needs:
        batches = _batches(args, "train", log)
        if batches is None and args.fisher:
            raise ConfigError(f"--fisher {source} needs data: give --data package.module:function or --data-dir D")
        if batches is None:
            raise ConfigError(
                f"{ckpt} has no Adam state to read the Fisher from; give a data source (--data or --data-dir), "
                "or use --criterion magnitude --allocation uniform"
            )
        loss_fn = usermodel.resolve_callable(args.loss) if getattr(args, "loss", None) else None
        n_samples = args.fisher_samples or 1000
        fisher = fisher_mod.estimate(source, model, batches=batches, n_samples=n_samples, loss_fn=loss_fn, notice=_note)
    meta = {"model": args.user_model, "checkpoint": ckpt.name, "fisher": source if needs else None}
    return compress(model, fisher, config, meta=meta), out


def evaluate(path: Path, args: argparse.Namespace, log) -> dict[str, Any]:
    """``fisherpack eval FILE --model ... --data ...``: figures of the file and its test error."""
    raw = format.read_bytes(path)  # its length, not the path's size: a pipe has none
    compressed = format.decode(raw, max_elements=getattr(args, "max_elements", None))
    model = _model_for(compressed, args, path)
    batches = _batches(args, "test", log)
    if batches is None:
        raise ConfigError("give test data for your model: --data package.module:function or --data-dir D")
    figures = {"model": args.user_model or file_meta.model_name(compressed.meta)}
    figures.update(file_summary(raw, compressed))
    return {**figures, **usermodel.evaluate(model, batches)}


def _model_for(compressed: Any, args: argparse.Namespace, path: Any) -> torch.nn.Module:
    """The model named by --model, else the registry model the file names, with the file loaded."""
    name = file_meta.model_name(compressed.meta)
    if args.user_model:
        model = _model(args.user_model)
    elif name in models.MODELS:
        model = models.build(name)
    else:
        raise ConfigError(f"{path} holds your own model ({name!r}); name it with --model package.module:factory")
    return load_into(model, compressed)


def compressed_line(tensors: list[dict[str, Any]]) -> str:
    """``inspect``'s summary: how many tensors and values were quantized, and which float tensors of
    2 or more dimensions were stored as they are (raw)."""
    quant = [t for t in tensors if t["kind"] == "quant"]
    raw = [t for t in tensors if t["kind"] == "raw"]
    values = sum(t.get("numel", 0) for t in quant)
    total = values + sum(t.get("numel", 0) for t in raw)
    matrices = [
        t["name"] for t in raw if len(t["shape"]) >= 2 and str(t.get("dtype", "")).startswith(("float", "bfloat"))
    ]
    listed = ", ".join(shown(m) for m in matrices[:5]) + (" ..." if len(matrices) > 5 else "")
    kept = f"; matrices stored raw: {listed}" if matrices else ""
    return f"compressed: {len(quant)} of {len(quant) + len(raw)} tensors ({values:,} of {total:,} values){kept}"


def add_export_command(sub: Any) -> None:
    q = sub.add_parser("export", help="write the model as safetensors and/or ONNX, or as C99 source (--format c)")
    q.add_argument("file")
    q.add_argument("--safetensors", metavar="OUT", help="plain state dict for safetensors.torch.load_file")
    q.add_argument("--onnx", metavar="OUT", help="ONNX graph (dense fp32 weights), batch dimension dynamic")
    q.add_argument("--strip", metavar="OUT", help="the same .fpk without its provenance (config, versions): "
                   "only what loading needs; the tensors' bytes are unchanged")  # fmt: skip
    q.add_argument("--input-shape", metavar="N,C,H,W", help="example input shape for ONNX (default: a batch of --data)")
    q.add_argument("--format", choices=["c"], help="c: C99 source running the packed weights (needs --out-dir)")
    q.add_argument("--out-dir", metavar="DIR", help="folder for --format c: NAME.h, NAME.c, NAME_main.c")
    q.add_argument("--name", help="C name for --format c (default: the file name, e.g. lenet5 -> lenet5_run)")
    q.add_argument("--max-elements", type=int, help="entries the file and the safetensors output may hold, aliases "
                   "written out counted (default: 4096 per byte of file, at least 2**20, at most 2**28)")  # fmt: skip
    add_force_flag(q)
    add_model_flags(q)
    q.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "c":
        return _export_c(args)
    outputs = (("--safetensors", args.safetensors), ("--onnx", args.onnx), ("--strip", args.strip))
    if all(out is None for _, out in outputs):
        raise ConfigError("nothing to export: give --safetensors OUT, --onnx OUT and/or --strip OUT")
    for flag, out in outputs:
        if out is not None:
            check_writable(out_path(out, "", flag), overwrite=args.force, inputs=[args.file])
    raw = format.read_bytes(args.file)
    compressed = format.decode(raw, max_elements=args.max_elements)
    written = []
    if args.safetensors:  # aliases are written out as copies: they count against the same cap
        cap = args.max_elements or header.default_max_elements(len(raw))
        atomic_write_bytes(args.safetensors, export.safetensors_bytes(compressed, max_elements=cap))
        written.append(args.safetensors)
    if args.onnx:
        model = _model_for(compressed, args, args.file)
        atomic_write_bytes(args.onnx, export.onnx_bytes(model, _example(args, file_meta.model_name(compressed.meta))))
        written.append(args.onnx)
    if args.strip:
        atomic_write_bytes(args.strip, format.stripped(raw, checked=True))
        written.append(args.strip)
    print(f"wrote {' and '.join(map(shown, written))}")
    return 0


def _export_c(args: argparse.Namespace) -> int:
    from .. import cexport

    if not args.out_dir:
        raise ConfigError("--format c writes several files: give --out-dir DIR")
    if args.safetensors or args.onnx or args.strip:
        raise ConfigError("--format c writes C only: export --safetensors / --onnx / --strip in a separate command")
    compressed = format.load(args.file)
    name = args.name or "".join(ch if ch.isalnum() else "_" for ch in Path(args.file).stem)
    files = cexport.to_c(
        _model_for(compressed, args, args.file), compressed, _example(args, file_meta.model_name(compressed.meta)), name
    )
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror or exc}") from None
    for fname, text in files.items():
        atomic_write_bytes(out / fname, text.encode())
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    return 0


def _example(args: argparse.Namespace, name: str | None) -> Any:
    if args.input_shape:
        try:
            shape = tuple(int(d) for d in args.input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape wants integers like 1,1,28,28, got {args.input_shape!r}") from None
        if not 1 <= len(shape) <= 8 or min(shape) < 1 or math.prod(shape) > 1 << 26:
            raise ConfigError(
                f"--input-shape wants 1 to 8 sizes >= 1 with at most 2**26 entries, got {args.input_shape!r}"
            )
        return torch.zeros(shape)
    if args.data:
        batch = next(iter(_batches(args, "test", None)), None)
        if batch is None:
            raise ConfigError(f"{args.data}() yielded no batch to trace the model with")
        return tuple(batch[0]) if isinstance(batch[0], (tuple, list)) else batch[0]
    if name in models.MODELS:
        return torch.zeros(1, 1, 28, 28)
    raise ConfigError("give an example input for ONNX: --input-shape N,C,H,W or --data package.module:function")
