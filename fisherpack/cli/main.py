"""The ``fisherpack`` command: thin subcommands over the library.

Every user mistake ends as one line on stderr, ``fisherpack: error: ...``, and a non-zero exit
(2 for bad flags, 1 for everything else); progress bars go to stderr, tables to stdout.

Launched by torchrun (WORLD_SIZE > 1 in the environment) every command joins the process group
(dist.init_from_env) and runs on every rank; only rank 0 shows progress, logs and tables and writes
files; an error is reported by every rank that meets it, each with its own line and exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, data, dist, models, pipeline
from ..bench import environment
from ..config import ALLOCATIONS, CRITERIA, FISHER_SOURCES, SCOPES, CompressConfig, PipelineConfig
from ..errors import ConfigError, FisherpackError
from ..fpk.fileio import atomic_write_bytes, check_writable, shown
from ..loading import summary
from ..version import __version__
from . import anymodel as cli_anymodel
from . import bench as cli_bench
from . import naming as usermodel
from . import reading
from . import usermodel as cli_usermodel
from .common import PIPELINE_FLAGS, add_force_flag, check_ranges, json_text, out_path, pipeline_changes
from .common import Bar as _Bar
from .common import Parser as _Parser
from .common import log as _log
from .common import on_rank0 as _on_rank0
from .common import table as _table

__all__ = ["main"]


def _add_compress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression (defaults depend on --model)")
    g.add_argument("--rate", type=float, help="fraction of weights to prune, in [0, 1)")
    g.add_argument("--criterion", choices=CRITERIA, help="pruning criterion")
    g.add_argument("--scope", choices=SCOPES, help="rank weights globally or within each layer")
    g.add_argument("--bits", type=float, help="average code bits per kept weight")
    g.add_argument("--allocation", choices=ALLOCATIONS, help="how widths are given to Fisher groups")
    g.add_argument("--groups", type=int, help="Fisher groups per tensor (waterfill)")
    g.add_argument("--no-entropy", action="store_true", help="disable the rANS entropy-coding stage")
    g.add_argument("--quantize-biases", action=argparse.BooleanOptionalAction,
                   help="also quantize (never prune) biases and norm scales, or store them losslessly")  # fmt: skip
    cli_usermodel.add_layer_flags(g)  # --include / --exclude / --override


def _compress_config(args: argparse.Namespace, base: CompressConfig) -> CompressConfig:
    changes = {
        k: getattr(args, k)
        for k in ("rate", "criterion", "scope", "bits", "allocation", "groups", "quantize_biases")
        if getattr(args, k, None) is not None
    }
    if getattr(args, "no_entropy", False):
        changes["entropy"] = False
    changes.update(cli_usermodel.layer_changes(args))
    return base.replace(**changes)


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    cfg = pipeline.default_config(args.model)
    changes: dict[str, Any] = {"compress": _compress_config(args, cfg.compress)}
    changes.update(pipeline_changes(args, (*PIPELINE_FLAGS, "fisher_samples")))
    return cfg.replace(**changes)


def _check_outputs(out: Path, force: bool, *suffixes: str, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, on rank 0 and before any work, an output (``out`` and ``out`` + each suffix) that
    cannot or may not be written, or that is one of the ``inputs``."""
    paths = [out, *(Path(f"{out}{suffix}") for suffix in suffixes)]
    checks = (lambda p=p: check_writable(p, overwrite=force, inputs=inputs) for p in paths)
    _on_rank0(f"checking {shown(out)}", *checks)


def cmd_reproduce(args: argparse.Namespace) -> int:
    if usermodel.is_spec(args.model):  # your own model: see cli/anymodel.py
        return cli_anymodel.reproduce(args, _compress_config, _log)
    cfg = _pipeline_config(args)
    out = out_path(args.out, f"{cfg.model}.fpk")
    _check_outputs(out, args.force, ".json", ".ckpt")
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = data.load(args.data_dir, log=_log).tensors()
    bar = _Bar(not args.quiet and dist.rank() == 0)
    ckpt = Path(f"{out}.ckpt")
    try:
        outcome = pipeline.run(cfg, x_train, y_train, x_test, y_test, checkpoint=ckpt, progress=bar)
    finally:
        bar.close()
    _, digests = dist.save(outcome.compressed, out, entropy=cfg.compress.entropy)

    def finish() -> None:  # rank 0 alone has the file (no shared disk is assumed); the others wait
        fig = {"model": cfg.model, **outcome.figures, **reading.evaluate_file(out, args.data_dir, (x_test, y_test))}
        if dist.world_size() > 1:  # every rank's SHA-256 of the file bytes, equal or save() had stopped
            fig["distributed"] = {"world_size": dist.world_size(), "rank_sha256": digests}
        fig.update(
            seconds=round(time.perf_counter() - started, 1),
            file=out.name,
            config=cfg.to_dict(),
            environment=environment.record(seed=cfg.seed),
        )
        atomic_write_bytes(Path(f"{out}.json"), (json_text(fig, indent=2) + "\n").encode())
        ckpt.unlink(missing_ok=True)
        print(reading.figures_table(fig))
        print(f"wrote {shown(out)} and {shown(out)}.json")

    _on_rank0(f"evaluating {out}", finish)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _pipeline_config(args)
    out = out_path(args.out, f"{cfg.model}.pt")
    _check_outputs(out, args.force, ".ckpt")
    x_train, y_train, x_test, y_test = data.load(args.data_dir, log=_log).tensors()
    bar = _Bar(not args.quiet and dist.rank() == 0)
    ckpt = Path(f"{out}.ckpt")
    try:
        outcome = pipeline.run(cfg, x_train, y_train, x_test, y_test, checkpoint=ckpt, progress=bar, until="train")
    finally:
        bar.close()
    blob = checkpoint.training_checkpoint(cfg, outcome.model, outcome.optimizer)
    _on_rank0(f"writing {shown(out)}", lambda: atomic_write_bytes(out, blob), lambda: ckpt.unlink(missing_ok=True))
    print(
        _table(
            [("model", cfg.model), ("test error", f"{outcome.figures['test_error_before']:.2%}"), ("wrote", shown(out))]
        )
    )
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    if args.user_model:  # a user's own model: see cli/usermodel.py
        return _compress_user(args)
    args.checkpoint = args.checkpoint or args.checkpoint_flag
    if not args.checkpoint:
        raise ConfigError("give a checkpoint: fisherpack compress CKPT (or --model PKG.MOD:FACTORY --checkpoint CKPT)")
    ckpt = pipeline.load_training_checkpoint(args.checkpoint)
    cfg = _pipeline_config(argparse.Namespace(**{**vars(args), "model": ckpt["model"]}))
    out = out_path(args.out, Path(args.checkpoint).with_suffix(".fpk"))
    _check_outputs(out, args.force, ".ckpt", inputs=[args.checkpoint])
    x_train, y_train, _, _ = data.load(args.data_dir, log=_log).tensors() if cfg.fisher != "adam" else (None,) * 4
    progress = Path(f"{out}.ckpt")  # a Fisher estimated from data survives a killed run
    compressed = pipeline.compress_checkpoint(ckpt, cfg, x_train, y_train, checkpoint=progress)
    _write_compressed(compressed, out, cfg.model)
    _on_rank0(f"removing {shown(progress)}", lambda: progress.unlink(missing_ok=True))
    return 0


def _compress_user(args: argparse.Namespace) -> int:
    config = _compress_config(args, CompressConfig())
    compressed, out = cli_usermodel.compress_user(args, config, _log)
    _write_compressed(compressed, out, args.user_model)
    return 0


def _write_compressed(compressed: Any, out: Path, model: str) -> None:
    """The one way ``compress`` writes its file: rank 0 writes, every rank checks that the bytes
    agree (dist.save; the entropy stage as the file's config says), then the figures are printed."""
    size, _ = dist.save(compressed, out)
    print(reading.figures_table({"model": model, **summary(compressed, size)}))
    print(f"wrote {shown(out)}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fisherpack", description="Prune and quantize networks by Fisher information into small files.")
    p.add_argument("--version", action="version", version=f"fisherpack {__version__}")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest for LeNet-sized models, same bytes on any machine)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=dist.DEFAULT_TIMEOUT,
        help=f"under torchrun: seconds a rank waits for the others before giving up (default {dist.DEFAULT_TIMEOUT:g})",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def data_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", help="folder with MNIST-format idx files (default: fetch MNIST into a cache)")

    def run_flags(q: argparse.ArgumentParser, out_help: str) -> None:
        q.add_argument("--model", default="lenet5", help=f"one of: {', '.join(sorted(models.MODELS))}")
        q.add_argument("--out", help=out_help)
        q.add_argument("--seed", type=int, help="random seed (default 0)")
        q.add_argument("--epochs", type=int, help="training epochs")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        add_force_flag(q)
        data_flag(q)

    q = sub.add_parser("reproduce", help="train, prune, quantize, write and check a file (the main job)")
    run_flags(q, "output file (default: MODEL.fpk); figures go to OUT.json")
    q.add_argument("--rounds", type=int, help="prune -> fine-tune rounds")
    q.add_argument("--finetune-epochs", type=float, help="fine-tuning epochs per round")
    q.add_argument("--augment", type=int, help="shift training images by up to this many pixels (0: off)")
    q.add_argument("--distill", type=float, help="weight of the dense model's soft targets in fine-tuning (0: off)")
    q.add_argument("--structured", type=float, help="also remove whole neurons and filters: this fraction of the "
                   "weights in removable channels (0: off; the model that loads the file is smaller)")  # fmt: skip
    q.add_argument("--structured-min", type=int, metavar="N",
                   help="structured pruning leaves every layer at least N channels (default 1)")  # fmt: skip
    q.add_argument("--fisher", choices=FISHER_SOURCES, help="Fisher estimator (default: adam)")
    q.add_argument("--final-epochs", type=int, help="masked fine-tuning epochs after the last round")
    q.add_argument("--qat-epochs", type=int, help="quantization-aware fine-tuning epochs after quantizing")
    q.add_argument("--batch-size", type=int, help="mini-batch size")
    for stage, what in (
        ("", "training"),
        ("finetune-", "pruning's fine-tuning"),
        ("qat-", "quantization-aware fine-tuning"),
    ):
        q.add_argument(f"--{stage}lr", type=float, help=f"Adam learning rate of {what}")
    _add_compress_flags(q)
    cli_anymodel.add_flags(q)  # --model package.module:factory --data ... --budget ...
    q.set_defaults(func=cmd_reproduce)

    q = sub.add_parser("train", help="train a model with Adam and save a checkpoint (model + Adam state)")
    run_flags(q, "checkpoint file (default: MODEL.pt)")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("compress", help="one-shot prune + quantize a checkpoint (ours, or your model's with --model)")
    q.add_argument("checkpoint", nargs="?", help="checkpoint written by fisherpack train")
    q.add_argument("--out", help="output file (default: CHECKPOINT with .fpk)")
    q.add_argument("--fisher", choices=FISHER_SOURCES, help="Fisher estimator (default: adam)")
    add_force_flag(q)
    data_flag(q)
    _add_compress_flags(q)
    cli_usermodel.add_model_flags(q, checkpoint=True)
    q.set_defaults(func=cmd_compress)

    cli_bench.add_sweep_parser(sub)

    q = sub.add_parser("eval", help="decode a file and measure its test error")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--max-elements", type=int, help="entries a file may declare (default: 4096 per byte of file, "
                   "at least 2**20, at most 2**28); raise it only for files you trust")  # fmt: skip
    data_flag(q)
    cli_usermodel.add_model_flags(q)
    q.set_defaults(func=reading.cmd_eval)

    q = sub.add_parser("inspect", help="per-tensor layout of a file (checked as load checks it)")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--max-elements", type=int, help="entries a file may declare (default: 4096 per byte of file, "
                   "at least 2**20, at most 2**28); raise it only for files you trust")  # fmt: skip
    q.set_defaults(func=reading.cmd_inspect)

    cli_usermodel.add_export_command(sub)
    cli_bench.add_sensitivity_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_ranges(args, parser)
    torch.set_num_threads(args.threads)
    owned = not dist.active()  # a group the caller set up is theirs to close
    joined = False
    try:
        with contextlib.ExitStack() as stack:
            if dist.init_from_env(args.timeout) and dist.rank() != 0:  # tables come from rank 0 only
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            joined = owned and dist.active()
            code = args.func(args)
    except FisherpackError as exc:
        print(f"fisherpack: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("fisherpack: interrupted; run the same command again to resume", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into `head` and the like
        os._exit(1)
    except MemoryError:
        print("fisherpack: error: out of memory; use smaller settings or a machine with more memory", file=sys.stderr)
        code = 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fisherpack: error: {exc.strerror or exc}{where}", file=sys.stderr)
        code = 1
    finally:
        if owned:
            dist.shutdown()
    if joined:  # a process of a group this call joined (torchrun): everything is written and closed
        # gloo's threads can abort the interpreter's own shutdown now and then ("terminate called
        # without an active exception"), which turned exit code 1 into a crash in CI: leave at once
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
