"""What each lever of the LeNet files is worth: bytes saved and error change, 3 seeds, on validation.

Every run is ``fisherpack reproduce --model fisherpack.models:LeNet5 --data examples.rowgru:splits
...``: the user-model path, on MNIST with 5,000 training images held out for validation, the test
set measured once per file. The levers, added one at a time to the row above:

- ``unstructured``: the registry's unstructured settings (OBD, rounds of pruning, 4 bits on average);
- ``+ structured``: whole filters and neurons removed by their group Fisher (``--structured``; for
  LeNet-300 with a higher rate, since its structured files have bytes to spare);
- ``+ 3 bits``: fewer code bits per kept weight, recovered by quantization-aware fine-tuning;
- ``+ 4 QAT epochs`` (LeNet-5): twice the quantization-aware fine-tuning, to win back what 3 bits cost;
- ``3 bits + 5 final epochs`` (LeNet-5): the 3-bit row with longer fine-tuning of the pruned model
  before quantization instead (a lever given as ``(name, flags, step)`` extends that step's row,
  not the row above).

And two levers of the file layout, measured on the chosen row's files without retraining (the tensor
bytes do not change): the version-2 header (zlib, no preset dictionary) against version 3's, and the
file stripped of its provenance (``fisherpack export --strip``).

Each run's figures are kept in ``--runs`` (one JSON per model, lever and seed): a run whose JSON is
there is not run again, so a stopped ablation resumes. Runs go ``--jobs`` at a time, one torch thread
each. Writes ``ablation.json``, ``ablation.png`` (file bytes against validation error, every run) and
``ablation.md`` (the table the README shows between its ``ablation`` markers) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fisherpack.bench import environment, readme  # noqa: E402
from fisherpack.fpk import container  # noqa: E402
from fisherpack.fpk.fileio import atomic_write_bytes  # noqa: E402

DATA = "examples.rowgru:splits"
MODELS = {
    "lenet5": {
        "factory": "fisherpack.models:LeNet5",
        "base": "--epochs 8 --rounds 6 --finetune-epochs 1 --final-epochs 3 --qat-epochs 2 --distill 0.5 "
                "--augment 2 --criterion obd --quantize-biases --bits 4 --rate 0.99",
        "levers": [("+ structured 0.8", "--structured 0.8"), ("+ 3 bits (was 4)", "--bits 3"),
                   ("+ 4 QAT epochs (was 2)", "--qat-epochs 4"),
                   ("3 bits + 5 final epochs (was 3)", "--final-epochs 5", 2)],
    },
    "lenet300": {
        "factory": "fisherpack.models:LeNet300",
        "base": "--epochs 30 --rounds 6 --finetune-epochs 1 --final-epochs 6 --qat-epochs 3 --distill 0.5 "
                "--augment 2 --criterion obd --quantize-biases --bits 4 --rate 0.95",
        "levers": [("+ structured 0.6, rate 97.5%", "--structured 0.6 --rate 0.975"),
                   ("+ 3 bits (was 4)", "--bits 3")],
    },
}  # fmt: skip
SEEDS = (0, 1, 2)
# What the defaults are chosen for: issue 15's test-error targets, as a ceiling on the mean *validation*
# error. The 5,000 held-out training images are harder than the test set for a compressed LeNet (val
# minus test was +0.1 to +0.6 pp, mean +0.3, over the runs that chose these levers), so the ceiling is
# the target plus MARGIN: tighter than that offset, a choice that errs towards accuracy.
TARGETS = {"lenet5": 0.008, "lenet300": 0.016}
MARGIN = 0.002


def ladder(model: str) -> list[tuple[str, list[str]]]:
    """(lever, reproduce flags) rows: each row's flags are its base row's with its lever's added (a
    later flag overrides an earlier one); the base is the row above unless the lever names a step."""
    rows = [("unstructured", MODELS[model]["base"].split())]
    for step, (lever, extra, *_) in enumerate(MODELS[model]["levers"], 1):
        rows.append((lever, rows[base(model, step)][1] + extra.split()))
    return rows


def base(model: str, step: int) -> int:
    """The step whose row ``step``'s lever extends."""
    _, _, *on = MODELS[model]["levers"][step - 1]
    return on[0] if on else step - 1


def _key(model: str, step: int, seed: int) -> str:
    return f"{model}-{step}-s{seed}"


TINY = "--epochs 1 --rounds 1 --finetune-epochs 0.25 --final-epochs 0 --qat-epochs 1".split()


def run_one(model: str, step: int, seed: int, flags: list[str], runs: Path, log, data: str = DATA) -> dict:
    """One ``reproduce`` run's figures: from its JSON in ``runs`` when that was made with the same
    flags, else made now."""
    key = _key(model, step, seed)
    record, fpk = runs / f"{key}.json", runs / f"{key}.fpk"
    if record.exists() and (kept := json.loads(record.read_text()))["flags"] == flags:
        return kept
    cmd = [sys.executable, "-m", "fisherpack", "reproduce", "--model", MODELS[model]["factory"], "--data", data,
           "--quiet", "--force", *flags, "--seed", str(seed), "--out", str(fpk)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log(f"{key}: {' '.join(cmd[3:])}")
    log_path = runs / f"{key}.log"
    with open(log_path, "wb") as fh:  # wait4: the run's own CPU time, whatever else runs beside it
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{key} failed:\n{log_path.read_text()[-2000:]}")
    log_path.unlink()
    out = figures_of(fpk, {"model": model, "step": step, "seed": seed, "flags": flags},
                     round(usage.ru_utime + usage.ru_stime, 1))  # fmt: skip
    atomic_write_bytes(record, (json.dumps(out, indent=1, sort_keys=True) + "\n").encode())
    for made in (fpk, Path(f"{fpk}.json")):  # remade by the command; the record keeps their figures
        made.unlink()
    log(f"{key}: {out['file_bytes']:,} bytes, val {out['val']:.4f}, test {out['test']:.4f}")
    return out


def figures_of(fpk: Path, run: dict, cpu_seconds: float) -> dict:
    """``run`` with the figures of its file ``fpk`` and of ``reproduce``'s JSON beside it."""
    figures = json.loads(Path(f"{fpk}.json").read_text())
    raw = fpk.read_bytes()
    packed = container.decode(raw)  # checks it: stripping need not again
    return {**run, "file_bytes": len(raw), "header_bytes": container.PRE.unpack_from(raw)[2],
            "v2_bytes": len(container.encode(packed, version=2)),
            "stripped_bytes": len(container.stripped(raw, checked=True)),
            "fp32_bytes": figures["fp32_bytes"], "val_dense": figures["val_dense"], "val": figures["val_file"],
            "test": figures["test_file"], "cpu_seconds": cpu_seconds}  # fmt: skip


def summarise(runs: list[dict]) -> dict:
    """Per model and step: mean, min and max over seeds of bytes, validation and test error."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["model"], {}).setdefault(str(r["step"]), []).append(r)
    summary = {}
    for model, steps in out.items():
        summary[model] = {}
        for step, rs in sorted(steps.items(), key=lambda kv: int(kv[0])):
            row = {"seeds": sorted(r["seed"] for r in rs), "fp32_bytes": rs[0]["fp32_bytes"]}
            for field in ("file_bytes", "v2_bytes", "stripped_bytes", "val", "test", "val_dense"):
                vals = [r[field] for r in rs]
                row[field] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
            summary[model][step] = row
    return summary


def ceiling(model: str) -> float:
    return TARGETS[model] + MARGIN


def chosen(summary: dict, model: str) -> int | None:
    """The ladder step whose mean file is smallest among those within the validation ceiling: the
    step whose flags ``reproduce``'s defaults for ``model`` are (tests/test_readme.py checks)."""
    fits = [(row["file_bytes"]["mean"], int(step)) for step, row in summary.get(model, {}).items()
            if row["val"]["mean"] <= ceiling(model)]  # fmt: skip
    return min(fits)[1] if fits else None


def table(summary: dict) -> str:
    """The README's ablation table: each lever's bytes and errors (mean over seeds, min..max)."""
    summary = {m: summary[m] for m in MODELS if m in summary}  # the models' order, not the JSON's
    seeds = "; ".join(f"{m} {', '.join(map(str, sorted({x for row in steps.values() for x in row['seeds']})))}"
                      for m, steps in summary.items())  # fmt: skip
    limits = ", ".join(f"{m} {ceiling(m):.2%}" for m in summary)
    rows = [f"Mean over seeds ({seeds}), min..max in brackets; each row is the one above with its lever "
            f"added (or the row its name says); bytes saved and test change are against that row. Bold: "
            f"the defaults, the smallest mean file whose mean validation error is within the "
            f"ceiling ({limits}: the test-error target + {MARGIN * 100:.1f} pp).", "",
            "| model | lever | file bytes (ratio) | bytes saved | val error | test error | test change |",
            "|" + "---|" * 7]  # fmt: skip
    for model, steps in summary.items():
        names = [name for name, _ in ladder(model)]
        pick = chosen(summary, model)
        for step, row in steps.items():
            b, v, t = row["file_bytes"], row["val"], row["test"]
            prev = steps.get(str(base(model, int(step)))) if int(step) else None
            saved = "" if prev is None else f"{prev['file_bytes']['mean'] - b['mean']:,.0f}"
            change = "" if prev is None else f"{(t['mean'] - prev['test']['mean']) * 100:+.2f} pp"
            name = f"**{names[int(step)]}** (the defaults)" if int(step) == pick else names[int(step)]
            rows.append(f"| {model} | {name} | {b['mean']:,.0f} ({row['fp32_bytes'] / b['mean']:.0f}x) "
                        f"| {saved} | {_pct(v)} | {_pct(t)} | {change} |")  # fmt: skip
        last = steps[str(pick)] if pick is not None else row
        for lever, field in (
            ("the defaults' file with a version-2 header", "v2_bytes"),
            ("the defaults' file stripped of provenance (`export --strip`)", "stripped_bytes"),
        ):
            d = last["file_bytes"]["mean"] - last[field]["mean"]
            rows.append(f"| {model} | {lever} | {last[field]['mean']:,.0f} | {d:,.0f} | same | same | |")  # fmt: skip
    return "\n".join(rows) + "\n"


def _pct(s: dict) -> str:
    return f"{s['mean']:.2%} ({s['min']:.2%}..{s['max']:.2%})"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in runs})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for step, (lever, _) in enumerate(ladder(model)):
            rs = [r for r in runs if r["model"] == model and r["step"] == step]
            ax.scatter([r["file_bytes"] for r in rs], [r["val"] * 100 for r in rs], label=lever, color=f"C{step}")
        seeds = len({r["seed"] for r in runs if r["model"] == model})
        ax.axhline(ceiling(model) * 100, color="grey", ls="--", label="validation ceiling")
        ax.set(title=f"{model}: {seeds} seed(s) per lever", xlabel="file bytes", ylabel="validation error (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--runs", default=str(ROOT / "benchmarks" / "results" / "ablation"), help="per-run JSON (resume)")
    p.add_argument("--only", nargs="*", choices=sorted(MODELS), help="models to run (default both)")
    p.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--data", default=DATA, help="PKG.MOD:FN returning train, val and test splits of MNIST")
    p.add_argument("--tiny", action="store_true", help="one epoch of everything, README untouched (for tests)")
    args = p.parse_args(argv)
    out, runs_dir = Path(args.out), Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    extra = TINY if args.tiny else []
    todo = [(m, step, seed, flags + extra) for m in args.only or list(MODELS) for seed in args.seeds
            for step, (_, flags) in enumerate(ladder(m))]  # fmt: skip

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda t: run_one(*t, runs_dir, log, args.data), todo))
    summary = summarise(runs)
    record = {"summary": summary, "runs": runs, "data": args.data, "environment": environment.record(seed=0)}
    atomic_write_bytes(out / "ablation.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    plot(runs, out / "ablation.png")
    text = table(summary)
    atomic_write_bytes(out / "ablation.md", text.encode())
    if args.tiny or args.only or set(args.seeds) != set(SEEDS):
        return 0  # the README shows the whole ablation only
    path = ROOT / "README.md"
    readme.rewrite(path, readme.replace_section(path.read_text(), "ablation", text), check=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
