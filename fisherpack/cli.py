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
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import __version__, cli_usermodel, data, dist, environment, format, models, pipeline, sensitivity, sweep
from .compress import load_into, summary
from .config import FISHER_SOURCES, CompressConfig, PipelineConfig
from .errors import ConfigError, FisherpackError
from .fileio import atomic_write_bytes, check_writable
from .prune import CRITERIA, SCOPES
from .quant import ALLOCATIONS
from .train import evaluate

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Bar:
    """pipeline.Progress on a tqdm bar (images/s and ETA) on stderr."""

    def __init__(self, enabled: bool, unit: str = "img") -> None:
        self.enabled, self.unit, self.bar = enabled, unit, None

    def start(self, total: int, done: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            scale = self.unit == "img"
            self.bar = tqdm(
                total=total, initial=done, unit=self.unit, unit_scale=scale, dynamic_ncols=True, file=sys.stderr
            )

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _log(message: str) -> None:
    if dist.rank() == 0:
        print(message, file=sys.stderr)


def _on_rank0(what: str, *actions: Callable[[], object]) -> None:
    """File actions on rank 0 only (no shared disk is assumed); every rank learns if they failed."""

    def run() -> None:
        for action in actions:
            action()

    dist.from_rank0(run, what)


def _add_compress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression (defaults depend on --model)")
    g.add_argument("--rate", type=float, help="fraction of weights to prune, in [0, 1)")
    g.add_argument("--criterion", choices=CRITERIA, help="pruning criterion")
    g.add_argument("--scope", choices=SCOPES, help="rank weights globally or within each layer")
    g.add_argument("--bits", type=float, help="average code bits per kept weight")
    g.add_argument("--allocation", choices=ALLOCATIONS, help="how widths are given to Fisher groups")
    g.add_argument("--groups", type=int, help="Fisher groups per tensor (waterfill)")
    g.add_argument("--no-entropy", action="store_true", help="disable the rANS entropy-coding stage")
    cli_usermodel.add_layer_flags(g)  # --include / --exclude / --override


def _compress_config(args: argparse.Namespace, base: CompressConfig) -> CompressConfig:
    changes = {
        k: getattr(args, k)
        for k in ("rate", "criterion", "scope", "bits", "allocation", "groups")
        if getattr(args, k, None) is not None
    }
    if getattr(args, "no_entropy", False):
        changes["entropy"] = False
    changes.update(cli_usermodel.layer_changes(args))
    return base.replace(**changes)


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    cfg = pipeline.default_config(args.model)
    changes: dict[str, Any] = {"compress": _compress_config(args, cfg.compress)}
    for key in ("seed", "epochs", "rounds", "finetune_epochs", "fisher"):
        if getattr(args, key, None) is not None:
            changes[key] = getattr(args, key)
    return cfg.replace(**changes)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _figures_table(fig: dict[str, Any]) -> str:
    rows = [
        ("model", str(fig.get("model", "?"))),
        ("params", f"{fig['params']:,}"),
        ("kept (non-zero)", f"{fig['nonzero_params']:,} ({fig['kept_fraction']:.2%})"),
        ("average code bits", f"{fig['avg_bits']:.2f}"),
        ("file bytes", f"{fig['file_bytes']:,}"),
        ("fp32 bytes", f"{fig['fp32_bytes']:,}"),
        ("ratio (fp32 / file)", f"{fig['ratio']:.1f}x"),
    ]
    if "test_error_before" in fig:
        rows.append(("test error before", f"{fig['test_error_before']:.2%}"))
    if "test_error" in fig:
        rows.append(("test error (from file)", f"{fig['test_error']:.2%}"))
    return _table(rows)


def _evaluate_file(
    path: Path,
    data_dir: str | None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_elements: int | None = None,
) -> dict[str, Any]:
    compressed = format.load(path, max_elements=max_elements)
    name = compressed.meta.get("model")
    if name not in models.MODELS:
        raise ConfigError(
            f"{path} holds a model that is not in fisherpack's registry ({name!r}); "
            "evaluate it with --model package.module:factory and --data or --data-dir"
        )
    model = load_into(models.build(name), compressed)
    x_test, y_test = test if test is not None else data.load(data_dir, log=_log).tensors()[2:]
    fig = {"model": name, **summary(compressed, path.stat().st_size)}
    fig["test_error"], fig["test_loss"] = evaluate(model, x_test, y_test)
    return fig


def cmd_reproduce(args: argparse.Namespace) -> int:
    cfg = _pipeline_config(args)
    out = Path(args.out or f"{cfg.model}.fpk")
    _on_rank0(
        f"checking {out}",
        lambda: check_writable(out),
        lambda: check_writable(Path(f"{out}.json")),
        lambda: check_writable(Path(f"{out}.ckpt")),
    )
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
        fig = {"model": cfg.model, **outcome.figures, **_evaluate_file(out, args.data_dir, (x_test, y_test))}
        if dist.world_size() > 1:  # every rank's SHA-256 of the file bytes, equal or save() had stopped
            fig["distributed"] = {"world_size": dist.world_size(), "rank_sha256": digests}
        fig.update(
            seconds=round(time.perf_counter() - started, 1),
            file=out.name,
            config=cfg.to_dict(),
            environment=environment.record(seed=cfg.seed),
        )
        atomic_write_bytes(Path(f"{out}.json"), (json.dumps(fig, indent=2, sort_keys=True) + "\n").encode())
        ckpt.unlink(missing_ok=True)
        print(_figures_table(fig))
        print(f"wrote {out} and {out}.json")

    _on_rank0(f"evaluating {out}", finish)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _pipeline_config(args)
    out = Path(args.out or f"{cfg.model}.pt")
    _on_rank0(f"checking {out}", lambda: check_writable(out), lambda: check_writable(Path(f"{out}.ckpt")))
    x_train, y_train, x_test, y_test = data.load(args.data_dir, log=_log).tensors()
    bar = _Bar(not args.quiet and dist.rank() == 0)
    ckpt = Path(f"{out}.ckpt")
    try:
        outcome = pipeline.run(cfg, x_train, y_train, x_test, y_test, checkpoint=ckpt, progress=bar, until="train")
    finally:
        bar.close()
    buf = io.BytesIO()
    torch.save(
        {
            "fisherpack_checkpoint": 1,
            "model": cfg.model,
            "state_dict": outcome.model.state_dict(),
            "optimizer": outcome.optimizer.state_dict(),
            "config": json.dumps(cfg.to_dict()),
        },
        buf,
    )
    _on_rank0(f"writing {out}", lambda: atomic_write_bytes(out, buf.getvalue()), lambda: ckpt.unlink(missing_ok=True))
    print(
        _table(
            [("model", cfg.model), ("test error", f"{outcome.figures['test_error_before']:.2%}"), ("wrote", str(out))]
        )
    )
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    if args.user_model:  # a user's own model: see cli_usermodel
        return _compress_user(args)
    args.checkpoint = args.checkpoint or args.checkpoint_flag
    if not args.checkpoint:
        raise ConfigError("give a checkpoint: fisherpack compress CKPT (or --model PKG.MOD:FACTORY --checkpoint CKPT)")
    ckpt = pipeline.load_training_checkpoint(args.checkpoint)
    cfg = _pipeline_config(argparse.Namespace(**{**vars(args), "model": ckpt["model"]}))
    out = Path(args.out or Path(args.checkpoint).with_suffix(".fpk"))
    _on_rank0(f"checking {out}", lambda: check_writable(out), lambda: check_writable(Path(f"{out}.ckpt")))
    x_train, y_train, _, _ = data.load(args.data_dir, log=_log).tensors() if cfg.fisher != "adam" else (None,) * 4
    progress = Path(f"{out}.ckpt")  # a Fisher estimated from data survives a killed run
    compressed = pipeline.compress_checkpoint(ckpt, cfg, x_train, y_train, checkpoint=progress)
    size, _ = dist.save(compressed, out, entropy=cfg.compress.entropy)
    _on_rank0(f"removing {progress}", lambda: progress.unlink(missing_ok=True))
    fig = {"model": cfg.model, **summary(compressed, size)}
    print(_figures_table(fig))
    print(f"wrote {out}")
    return 0


def _compress_user(args: argparse.Namespace) -> int:
    config = _compress_config(args, CompressConfig())
    compressed, out = cli_usermodel.compress_user(args, config, _log)
    size = format.save(compressed, out, entropy=config.entropy)
    print(_figures_table({"model": args.user_model, **summary(compressed, size)}))
    print(f"wrote {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if args.user_model or args.data:  # a user's own model or data: see cli_usermodel
        fig = cli_usermodel.evaluate(path, args, _log)
    else:
        fig = _evaluate_file(path, args.data_dir, max_elements=args.max_elements)
    print(json.dumps(fig, sort_keys=True) if args.json else _figures_table(fig))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    described = format.describe(format.read(path), max_elements=args.max_elements)
    if args.json:
        print(json.dumps(described, sort_keys=True))
        return 0
    header = f"{'tensor':<24} {'shape':<16} {'kept':>8} {'bits':<12} {'bytes':>9}  encodings"
    lines = [header, "-" * len(header)]
    for t in described["tensors"]:
        shape = "x".join(map(str, t["shape"])) or "scalar"
        kept = f"{t['kept'] / max(t['numel'], 1):.1%}" if "kept" in t else t["kind"]
        bits = ",".join(str(g["bits"]) for g in t.get("groups", [])) or t.get("dtype", "")
        encs = " ".join(f"{s['role']}:{s['encoding']}" for s in t.get("streams", []))
        lines.append(f"{t['name']:<24} {shape:<16} {kept:>8} {bits:<12} {t['bytes']:>9,}  {encs}")
    lines.append(f"file: {described['file_bytes']:,} bytes, header {described['header_bytes']:,} bytes")
    lines.append(f"model: {described['meta'].get('model', '?')}")
    print("\n".join(lines))
    return 0


# --- fisherpack sensitivity -----------------------------------------------------------------------
def cmd_sensitivity(args: argparse.Namespace) -> int:
    if dist.world_size() > 1:
        raise ConfigError("sensitivity runs in one process; start it without torchrun")
    if args.checkpoint and (args.model is not None or args.epochs is not None):
        raise ConfigError("give a checkpoint, or --model/--epochs to train one here, not both")
    seed = args.seed if args.seed is not None else 0
    cfg = sensitivity.SensitivityConfig(
        rates=args.rates,
        criteria=args.criteria,
        bits=args.bits,
        fisher_samples=args.fisher_samples,
        seed=seed,
        rank_by=args.rank_by,
    )
    if args.plot:
        check_writable(Path(args.plot))
    ckpt = pipeline.load_training_checkpoint(args.checkpoint) if args.checkpoint else None
    x_train, y_train, _, _ = data.load(args.data_dir, log=_log).tensors()
    x_fit, y_fit, x_val, y_val = data.split_validation(x_train, y_train, args.val, seed)
    if ckpt is not None:
        model, optimizer, batch_size = pipeline.restore_checkpoint(ckpt)
        name, held_out = ckpt["model"], False
        _log("note: `fisherpack train` used every training image, so the held-out split was seen in training")
    else:
        pcfg = pipeline.default_config(args.model or "lenet5").replace(seed=seed)
        if args.epochs is not None:
            pcfg = pcfg.replace(epochs=args.epochs)
        bar = _Bar(not args.quiet)
        try:
            outcome = pipeline.run(pcfg, x_fit, y_fit, x_val, y_val, progress=bar, until="train")
        finally:
            bar.close()
        model, optimizer, batch_size = outcome.model, outcome.optimizer, pcfg.batch_size
        name, held_out = pcfg.model, True
    fishers = sensitivity.estimate(model, x_fit, y_fit, cfg, optimizer=optimizer, batch_size=batch_size)
    report = sensitivity.analyse(model, fishers, x_val, y_val, cfg)
    result = {
        "model": name,
        "checkpoint": args.checkpoint,
        "validation": {"images": len(x_val), "seed": seed, "held_out_from_training": held_out},
        "validation_error": evaluate(model, x_val, y_val)[0],
        "config": {**cfg.__dict__, "adam_batch_size": batch_size},
        "environment": environment.record(seed=seed),
        **report.to_dict(),
    }
    if args.plot:
        buf = io.BytesIO()
        sensitivity.figure(report, title=f"{name}: single-layer changes").savefig(buf, format="png", dpi=120)
        atomic_write_bytes(Path(args.plot), buf.getvalue())
    print(json.dumps(result, sort_keys=True) if args.json else _sensitivity_table(result))
    return 0


def _sensitivity_table(result: dict[str, Any]) -> str:
    sources = list(result["spearman"])
    head = f"{'layer':<16} {'setting':<16} {'changed':>9}" + "".join(f" {'pred ' + s:>15}" for s in sources)
    lines = [head + f" {'measured':>12}", "-" * (len(head) + 13)]
    for r in result["rows"]:
        preds = "".join(f" {r['predicted'][s]:>15.3e}" for s in sources)
        lines.append(f"{r['layer']:<16} {r['setting']:<16} {r['changed']:>9,}{preds} {r['measured']:>12.3e}")
    lines.append(f"Spearman rank correlation, predicted vs measured ({len(result['rows'])} settings):")
    for s, rho in result["spearman"].items():
        fmt = {k: "n/a" if v is None else f"{v:.3f}" for k, v in rho.items()}
        lines.append(f"  {s:<10} {fmt['all']} (prune {fmt['prune']}, quantize {fmt['quantize']})")
    v = result["validation"]
    seen = "held out from training" if v["held_out_from_training"] else "seen in training"
    lines.append(
        f"held-out loss before any change {result['base_loss']:.4f}, error {result['validation_error']:.2%} "
        f"({v['images']:,} training images, {seen}); OBD ranked and steps chosen by the {result['rank_by']} Fisher"
    )
    return "\n".join(lines)


def _sensitivity_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("sensitivity", help="per-layer loss increase: Fisher prediction vs measurement")
    q.add_argument("checkpoint", nargs="?", help="checkpoint from fisherpack train (default: train --model here)")
    q.add_argument(
        "--model", help=f"train this model first, one of: {', '.join(sorted(models.MODELS))} (default lenet5)"
    )
    q.add_argument("--epochs", type=int, help="training epochs when training here")
    q.add_argument("--seed", type=int, help="seed of training, the validation split and the Fisher subset (default 0)")
    q.add_argument("--val", type=int, default=5000, help="training images held out to measure on (default 5000)")
    q.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.9], help="pruning rates (default 0.5 0.9)")
    q.add_argument("--criteria", nargs="+", choices=CRITERIA, default=["magnitude", "obd"], help="pruning criteria")
    q.add_argument("--bits", type=int, nargs="+", default=[2, 4, 6], help="code widths (default 2 4 6)")
    q.add_argument("--fisher-samples", type=int, default=1000, help="samples of the empirical Fisher (default 1000)")
    q.add_argument(
        "--rank-by", choices=("adam", "empirical"), default="adam", help="Fisher that ranks OBD and picks steps"
    )
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--plot", help="write a PNG scatter plot (predicted vs measured, log-log) to this file")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--data-dir", help="folder with MNIST-format idx files (default: fetch MNIST into a cache)")
    q.set_defaults(func=cmd_sensitivity)


def cmd_sweep(args: argparse.Namespace) -> int:
    names = sorted(models.MODELS) if args.model == "all" else [args.model]
    for name in names:
        models.build(name)  # unknown model: one-line error before any work
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}") from None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    paths = {name: out_dir / f"sweep_{name}{suffix}.json" for name in names}
    for path in paths.values():
        check_writable(path)
    runner = sweep.Sweep(data.load(args.data_dir, log=_log), Path(args.workdir))
    for name in names:
        path = paths[name]
        results = _read_results(path)
        specs = sweep.plan(name, seeds, quick=args.quick)
        current = {sweep.key(s) for s in specs}  # points of other defaults or plans are stale
        results["points"] = {k: v for k, v in results["points"].items() if k in current}
        todo = sweep.pending(specs, results["points"])
        bar = _Bar(not args.quiet, unit="point")
        bar.start(len(todo), 0)

        def write(complete: bool) -> None:
            results["complete"] = complete  # readers (README tables) use finished sweeps only
            results["environment"] = environment.record(seeds=list(seeds), quick=args.quick)
            atomic_write_bytes(path, (json.dumps(results, indent=1, sort_keys=True) + "\n").encode())

        try:
            for spec in todo:
                bar.stage(f"{name} {spec['sweep']} {spec.get('method', spec.get('scheme'))}")
                results["points"][sweep.key(spec)] = runner.run(spec)
                write(complete=False)
                bar.advance(1)
        finally:
            bar.close()
        write(complete=True)
        if not args.no_plots:
            _sweep_plots(results["points"], name, out_dir, suffix)
        print(f"{name}: {len(results['points'])} points in {path}")
    return 0


def _read_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"points": {}}
    try:
        results = json.loads(path.read_text())
        assert isinstance(results.get("points"), dict)
    except (ValueError, AssertionError, AttributeError):
        raise FisherpackError(f"{path} is not a sweep result file; move it away to start a new sweep") from None
    return results


def _sweep_plots(points: dict[str, Any], name: str, out_dir: Path, suffix: str) -> None:
    from . import plots

    plots.plot_prune(points, name, out_dir / f"sweep_{name}{suffix}_prune.png")
    plots.plot_quant(points, name, out_dir / f"sweep_{name}{suffix}_quant.png")
    plots.plot_front(points, name, out_dir / f"sweep_{name}{suffix}_front.png")


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
        data_flag(q)

    q = sub.add_parser("reproduce", help="train, prune, quantize, write and check a file (the main job)")
    run_flags(q, "output file (default: MODEL.fpk); figures go to OUT.json")
    q.add_argument("--rounds", type=int, help="prune -> fine-tune rounds")
    q.add_argument("--finetune-epochs", type=float, help="fine-tuning epochs per round")
    q.add_argument("--fisher", choices=FISHER_SOURCES, help="Fisher estimator (default: adam)")
    _add_compress_flags(q)
    q.set_defaults(func=cmd_reproduce)

    q = sub.add_parser("train", help="train a model with Adam and save a checkpoint (model + Adam state)")
    run_flags(q, "checkpoint file (default: MODEL.pt)")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("compress", help="one-shot prune + quantize a checkpoint (ours, or your model's with --model)")
    q.add_argument("checkpoint", nargs="?", help="checkpoint written by fisherpack train")
    q.add_argument("--out", help="output file (default: CHECKPOINT with .fpk)")
    q.add_argument("--fisher", choices=FISHER_SOURCES, help="Fisher estimator (default: adam)")
    data_flag(q)
    _add_compress_flags(q)
    cli_usermodel.add_model_flags(q, checkpoint=True)
    q.set_defaults(func=cmd_compress)

    q = sub.add_parser("sweep", help="measure every method the same way: pruning, quantization, whole pipeline")
    q.add_argument("--model", default="all", help="lenet5, lenet300 or all")
    q.add_argument("--quick", action="store_true", help="a thin slice of the sweep that runs in minutes")
    q.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    q.add_argument("--out", default="benchmarks/results", help="folder for the JSON results and PNG plots")
    q.add_argument("--workdir", default="benchmarks/work", help="folder for cached base models")
    q.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    data_flag(q)
    q.set_defaults(func=cmd_sweep)

    q = sub.add_parser("eval", help="decode a file and measure its test error")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--max-elements", type=int, help="entries a file may declare (default: 4096 per byte of file, "
                   "at least 2**20, at most 2**28); raise it only for files you trust")  # fmt: skip
    data_flag(q)
    cli_usermodel.add_model_flags(q)
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("inspect", help="per-tensor layout of a file")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--max-elements", type=int, help="entries a file may declare (default: 4096 per byte of file, "
                   "at least 2**20, at most 2**28); raise it only for files you trust")  # fmt: skip
    q.set_defaults(func=cmd_inspect)

    cli_usermodel.add_export_command(sub)
    _sensitivity_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1:
        _parser().error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    owned = not dist.active()  # a group the caller set up is theirs to close
    try:
        with contextlib.ExitStack() as stack:
            if dist.init_from_env(args.timeout) and dist.rank() != 0:  # tables come from rank 0 only
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return args.func(args)
    except FisherpackError as exc:
        print(f"fisherpack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fisherpack: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os._exit(1)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fisherpack: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    finally:
        if owned:
            dist.shutdown()
