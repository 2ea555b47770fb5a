"""The measuring subcommands: ``fisherpack sweep`` and ``fisherpack sensitivity``."""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path
from typing import Any

from .. import data, dist, models, pipeline
from ..bench import environment, sensitivity, sweep
from ..bench.subject import slug
from ..config import CRITERIA
from ..errors import ConfigError, FisherpackError
from ..fpk.fileio import atomic_write_bytes, check_writable
from ..persample import FallbackNotice
from ..train import evaluate
from . import anymodel as cli_anymodel
from . import sweepparts
from .common import Bar as _Bar
from .common import add_force_flag, given, json_text, out_path
from .common import log as _log

__all__ = ["add_sensitivity_parser", "add_sweep_parser"]


# --- fisherpack sensitivity -----------------------------------------------------------------------
def cmd_sensitivity(args: argparse.Namespace) -> int:
    if dist.world_size() > 1:
        raise ConfigError("sensitivity runs in one process; start it without torchrun")
    if args.model and ":" in args.model:  # your own model: see cli/anymodel.py
        return cli_anymodel.sensitivity(args, _sensitivity_table)
    if args.checkpoint and (args.model is not None or args.epochs is not None):
        raise ConfigError("give a checkpoint, or --model/--epochs to train one here, not both")
    seed = args.seed if args.seed is not None else 0
    cfg = sensitivity.SensitivityConfig(seed=seed, **given(args, *sensitivity.FLAGS))
    if args.plot is not None:
        check_writable(out_path(args.plot, "", "--plot"), overwrite=args.force, inputs=filter(None, [args.checkpoint]))
    ckpt = pipeline.load_training_checkpoint(args.checkpoint) if args.checkpoint else None
    x_train, y_train, _, _ = data.load(args.data_dir, log=_log).tensors()
    x_fit, y_fit, x_val, y_val = data.split_validation(x_train, y_train, args.val, seed)
    if ckpt is not None:
        model, optimizer = pipeline.restore_checkpoint(ckpt)
        batch_size = pipeline.training_batch_size(ckpt)
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
    print(json_text(result) if args.json else _sensitivity_table(result))
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


def add_sensitivity_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("sensitivity", help="per-layer loss increase: Fisher prediction vs measurement")
    q.add_argument("checkpoint", nargs="?", help="checkpoint from fisherpack train (default: train --model here)")
    q.add_argument(
        "--model", help=f"train this model first, one of: {', '.join(sorted(models.MODELS))} (default lenet5)"
    )
    q.add_argument("--epochs", type=int, help="training epochs when training here")
    q.add_argument("--seed", type=int, help="seed of training, the validation split and the Fisher subset (default 0)")
    q.add_argument("--val", type=int, default=5000, help="training images held out to measure on (default 5000)")
    q.add_argument("--rates", type=float, nargs="+", help="pruning rates (default 0.5 0.9)")
    q.add_argument("--criteria", nargs="+", choices=CRITERIA, help="pruning criteria (default magnitude obd)")
    q.add_argument("--bits", type=int, nargs="+", help="code widths (default 2 4 6)")
    q.add_argument("--fisher-samples", type=int, help="samples of the empirical Fisher (default 1000)")
    q.add_argument(
        "--rank-by", choices=("adam", "empirical"), help="Fisher that ranks OBD and picks steps (default adam)"
    )
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--plot", help="write a PNG scatter plot (predicted vs measured, log-log) to this file")
    add_force_flag(q)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--data-dir", help="folder with MNIST-format idx files (default: fetch MNIST into a cache)")
    q.add_argument("--data", metavar="PKG.MOD:FN", help="your model's train/val splits (with --model PKG.MOD:FACTORY)")
    q.set_defaults(func=cmd_sensitivity)


def cmd_sweep(args: argparse.Namespace) -> int:
    names = sorted(models.MODELS) if args.model == "all" else [args.model]
    for name in names:
        if not sweepparts.is_user_model(name):
            models.build(name)  # unknown model: one-line error before any work
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}") from None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    paths = {name: out_dir / f"sweep_{slug(name)}{suffix}.json" for name in names}
    for path in paths.values():
        check_writable(path, overwrite=args.force)
    parts = [_read_part(Path(other)) for other in args.merge]  # bad parts fail before any work
    with cli_anymodel.notes():  # e.g. a GRU's Fisher by the exact path: one line, not a warning
        warnings.filterwarnings("once", category=FallbackNotice)  # a sweep estimates it many times
        subjects = sweepparts.subjects(names, args)
        runner = sweep.Sweep(subjects, Path(args.workdir))
        for subject in subjects:
            _sweep_one(runner, subject, paths[subject.name], seeds, parts, args, out_dir, suffix)
    return 0


def _sweep_one(runner, subject, path: Path, seeds, parts, args: argparse.Namespace, out_dir: Path, suffix: str) -> None:
    name = subject.name
    results = _read_results(path)
    specs = sweep.plan(subject, seeds, quick=args.quick)
    current = {sweep.key(s) for s in specs}
    results["points"] = _set_aside_stale(path, results["points"], current)
    for other, theirs in parts:
        _merge(results, other, theirs, current)
    todo = sweep.pending(specs, results["points"])
    if todo or "environment" not in results:  # the code and machine that measure the points to do
        results["environment"] = environment.record(seeds=list(seeds), quick=args.quick)
    results["metric"] = subject.metric_name  # what every val_error and test_error holds
    results["subject"] = {"model": name, "data": args.data, "checkpoint": args.checkpoint, "tags": subject.tags}
    bar = _Bar(not args.quiet, unit="point")
    bar.start(len(todo), 0)
    try:
        for spec in todo:
            bar.stage(f"{name} {spec['sweep']} {spec.get('method', spec.get('scheme'))}")
            results["points"][sweep.key(spec)] = runner.run(spec)
            _write_results(path, results, complete=False)
            bar.advance(1)
    finally:
        bar.close()
    results["bases"] = sweep.base_figures(runner, specs)  # the dense models every point starts from
    results.setdefault("settings", {})[sweep.settings_id(subject.defaults)] = sweep.settings(subject.defaults)
    _write_results(path, results, complete=True)
    if not args.no_plots:
        _sweep_plots(results["points"], name, out_dir / f"sweep_{slug(name)}{suffix}", subject.metric_name)
    print(sweepparts.summary(results, name))
    print(f"{name}: {len(results['points'])} points in {path}")


def _set_aside_stale(path: Path, points: dict[str, Any], current: set[str]) -> dict[str, Any]:
    """The points of the current plan. Points measured under other defaults or plans are moved to
    ``<name>.stale.json`` beside the results, never dropped: hours of measurements come back if
    the settings do (their points are taken back from there)."""
    stale_path = path.with_name(path.stem + ".stale.json")
    stale = _read_results(stale_path)["points"] if stale_path.exists() else {}
    moving = {k: v for k, v in points.items() if k not in current}
    back = {k: v for k, v in stale.items() if k in current and k not in points}
    if moving or back:
        stale.update(moving)
        for k in back:
            del stale[k]
        _write_results(stale_path, {"points": stale}, complete=False)
        if moving:
            _log(f"{len(moving)} points measured with other settings set aside in {stale_path}")
        if back:
            _log(f"{len(back)} points taken back from {stale_path}")
    return {**{k: v for k, v in points.items() if k in current}, **back}


def _read_part(other: Path) -> tuple[Path, dict[str, Any]]:
    """A ``--merge`` file and its results, or a one-line error."""
    if not other.is_file():
        raise ConfigError(f"--merge {other}: no such file; give the sweep_<model>.json of another run")
    try:
        return other, _read_results(other)
    except FisherpackError:
        raise ConfigError(f"--merge {other}: not a sweep result file (a sweep_<model>.json)") from None


def _merge(results: dict[str, Any], other: Path, theirs: dict[str, Any], current: set[str]) -> None:
    """Takes the points of the current plan that ``theirs`` (the results in ``other`` of the same
    sweep run elsewhere: other seeds in another process, another machine) has and ``results``
    lacks, and records which file and environment they were measured in."""
    new = {k: v for k, v in theirs["points"].items() if k in current and k not in results["points"]}
    if new:
        results["points"].update(new)
        part = {"file": other.name, "points": len(new), "environment": theirs.get("environment")}
        results["merged"] = [*results.get("merged", []), part]
    _log(f"{len(new)} points merged from {other}")


def _write_results(path: Path, results: dict[str, Any], complete: bool) -> None:
    results["complete"] = complete  # readers (README tables) use finished sweeps only
    atomic_write_bytes(path, (json.dumps(results, indent=1, sort_keys=True) + "\n").encode())


def _read_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"points": {}}
    try:
        results = json.loads(path.read_text())
        assert isinstance(results.get("points"), dict)
    except (ValueError, AssertionError, AttributeError):
        raise FisherpackError(f"{path} is not a sweep result file; move it away to start a new sweep") from None
    return results


def _sweep_plots(points: dict[str, Any], name: str, stem: Path, metric: str) -> None:
    from ..bench import plots

    plots.plot_prune(points, name, f"{stem}_prune.png", metric=metric)
    plots.plot_quant(points, name, f"{stem}_quant.png", metric=metric)
    plots.plot_front(points, name, f"{stem}_front.png", metric=metric)


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("sweep", help="measure every method the same way: pruning, quantization, whole pipeline")
    q.add_argument("--model", default="all", help="lenet5, lenet300, all, or your own package.module:factory")
    q.add_argument("--quick", action="store_true", help="a thin slice of the sweep that runs in minutes")
    q.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    q.add_argument("--out", default="benchmarks/results", help="folder for the JSON results and PNG plots")
    q.add_argument("--workdir", default="benchmarks/work", help="folder for cached base models")
    q.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_force_flag(q)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--data-dir", help="folder with MNIST-format idx files (default: fetch MNIST into a cache)")
    q.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="FILE",
        help="first take the finished points of these result files of the same sweep (e.g. one --seeds N per process)",
    )
    cli_anymodel.add_flags(q, budget=False)
    q.set_defaults(func=cmd_sweep)
