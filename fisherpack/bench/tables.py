"""The README's results section, made from the committed sweep and reference JSON (no hand-typed
numbers), and the rule that picks ``reproduce``'s default rate from a sweep (:func:`pick`).

``python benchmarks/readme_results.py`` rewrites the section; ``--check`` exits 1 if it is stale.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .readme import replace_section

SECTION = "results"
MODELS = ("lenet5", "lenet300")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# The committed reference files: each model's defaults, and LeNet-5 at the smaller setting of
# SMALL_FLAGS (issue 15's second setting: the best validation run of those in the CHANGELOG)
REFERENCE_FILES = ("lenet5", "lenet5-small", "lenet300")
SMALL_FLAGS = "--structured 0.97 --structured-min 12 --rate 0.995 --rounds 12 --final-epochs 10 --qat-epochs 3"


def reference_table(results_dir: Path) -> list[str]:
    rows = []
    for model in REFERENCE_FILES:
        path = results_dir / f"{model}.fpk.json"
        if not path.exists():
            continue
        f = json.loads(path.read_text())
        rows.append(
            f"| `{model}.fpk` | {f['params']:,} | {f['kept_fraction']:.2%} | {f['avg_bits']:.2f} | "
            f"{f['file_bytes']:,} | **{f['ratio']:.0f}x** | {_pct(f['test_error_before'])} | "
            f"**{_pct(f['test_error'])}** |"
        )
    if not rows:
        return []
    return [
        "Made by `fisherpack reproduce` with the default settings (`lenet5-small.fpk`: `--model lenet5",
        f"{SMALL_FLAGS}`) on real MNIST (60,000 training, 10,000 test images), then read back from disk by",
        "`fisherpack eval`:",
        "",
        "| file | params | kept | avg bits | file bytes | fp32 / file | test error, dense | test error, from file |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _mean_std(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{100 * a.mean():.2f} ± {100 * a.std():.2f}" if len(a) > 1 else f"{100 * a.mean():.2f}"


# The error budget the defaults are chosen for: the smallest file whose mean validation error is at
# most this many times the dense models' mean validation error on the same split. Relative, because
# the validation split (the end of the training set) is harder than the test set: an absolute
# test-set level such as Deep Compression's 0.74% would compare errors of different data.
ERROR_FACTOR = 1.5

FISHER_METHODS = ("fisher-adam", "fisher-empirical", "fisher-sampled", "obd-adam", "obd-empirical", "two_stage-adam")


def verdict(specs: list[tuple[dict, dict]]) -> list[str]:
    """Fisher-based pruning against magnitude, every mode, scope and rate >= 90%: the best
    Fisher-based method and its mean validation error minus magnitude's (negative: Fisher wins)."""
    cells = defaultdict(list)
    for s, r in specs:
        if s["sweep"] == "prune":
            for mode in ("oneshot", "finetuned"):
                if mode in r:
                    cells[(mode, s["scope"], s["method"], s["rate"])].append(r[mode]["val_error"])
    rates = sorted({k[3] for k in cells if k[3] >= 0.9})
    if not rates:
        return []
    out = [
        "Where Fisher beats magnitude: the best Fisher-based criterion at each rate, and its validation",
        "error minus magnitude's in percentage points (negative: Fisher better; ± is the seeds' std of",
        "the difference):",
        "",
        "| mode, ranking | " + " | ".join(f"{r:.1%}" for r in rates) + " |",
        "|---" * (len(rates) + 1) + "|",
    ]
    for mode in ("oneshot", "finetuned"):
        for scope in ("global", "layer"):
            row = []
            for rate in rates:
                mag = np.asarray(cells.get((mode, scope, "magnitude", rate), []))
                options = [(np.mean(cells[k]), k[2]) for m in FISHER_METHODS if (k := (mode, scope, m, rate)) in cells]
                if not options or not mag.size:
                    row.append("")
                    continue
                _, best = min(options)
                diff = np.asarray(cells[(mode, scope, best, rate)]) - mag
                row.append(f"{best} {100 * diff.mean():+.2f} ± {100 * diff.std():.2f}")
            label = "one-shot" if mode == "oneshot" else "fine-tuned"
            out.append(f"| {label}, {scope} | " + " | ".join(row) + " |")
    out.append("")
    return out


def load_sweep(results_dir: Path, model: str, partial: bool = False) -> dict | None:
    """The finished sweep of ``model`` (None if absent or still running, unless ``partial``)."""
    path = results_dir / f"sweep_{model}.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    return results if partial or results.get("complete") else None


def error_budget(results: dict) -> float | None:
    """ERROR_FACTOR times the dense models' mean validation error (None without dense figures)."""
    bases = [b["val_error"] for b in results.get("bases", {}).values()]
    return ERROR_FACTOR * float(np.mean(bases)) if bases else None


def pick(results: dict) -> tuple[float, float, float] | None:
    """(rate, mean validation error, mean file bytes) of the smallest fisherpack pipeline file whose
    mean validation error is within the error budget: what the default rate of ``reproduce`` should
    be."""
    budget = error_budget(results)
    if budget is None:
        return None
    cells = defaultdict(list)
    for k, r in results["points"].items():
        s = json.loads(k)
        if s["sweep"] == "pipeline" and s["method"] == "fisherpack":
            cells[s["rate"]].append((r["val_error"], r["file_bytes"]))
    fits = [(np.mean([b for _, b in v]), rate, np.mean([e for e, _ in v])) for rate, v in cells.items()]
    fits = [f for f in fits if f[2] <= budget]
    if not fits:
        return None
    nbytes, rate, err = min(fits)
    return rate, err, nbytes


def sweep_tables(results_dir: Path, model: str, partial: bool = False) -> list[str]:
    results = load_sweep(results_dir, model, partial)
    if results is None:
        return []  # a sweep still running (or killed) is not reported
    specs = [(json.loads(k), v) for k, v in results["points"].items()]
    seeds = sorted({s["seed"] for s, _ in specs})
    out = [f"### {model} (validation error in %, mean ± std over seeds {', '.join(map(str, seeds))})", ""]
    prune = defaultdict(list)
    for s, r in specs:
        if s["sweep"] == "prune" and s["scope"] == "global" and "finetuned" in r:
            prune[(s["method"], s["rate"])].append(r["finetuned"]["val_error"])
    rates = sorted({rate for _, rate in prune if rate >= 0.9})
    if prune:
        out += ["Pruning, global ranking, one-shot then the same fine-tuning budget for every method:", ""]
        out += ["| method | " + " | ".join(f"{r:.1%} pruned" for r in rates) + " |", "|---" * (len(rates) + 1) + "|"]
        for method in sorted({m for m, _ in prune}):
            out.append(
                f"| {method} | "
                + " | ".join(_mean_std(prune[(method, r)]) if (method, r) in prune else "" for r in rates)
                + " |"
            )
        out.append("")
    out += verdict(specs)
    quant = defaultdict(list)
    for s, r in specs:
        if s["sweep"] == "quant":
            quant[(s["scheme"], s["bits"], "ptq")].append(r["ptq"]["val_error"])
            if "qat" in r:
                quant[(s["scheme"], s["bits"], "qat")].append(r["qat"]["val_error"])
            quant[(s["scheme"], s["bits"], "bytes")].append(r.get("file_bytes") or r.get("est_bytes"))
    bits = [b for b in (2, 3, 4) if any(k[1] == b for k in quant)]
    if quant:
        out += [
            "Quantization of the dense model (no pruning) to an average code width: validation error",
            "before / after fine-tuning, and the file's bytes (k-means: codes + codebooks, estimated; it",
            "has no file format here). Fisher groups cost group ids in the file, so at equal average bits",
            "their files are larger than uniform ones:",
            "",
        ]
        out += ["| scheme | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---" * (len(bits) + 1) + "|"]
        for scheme in sorted({k[0] for k in quant}):
            cells = [
                f"{_mean_std(quant[(scheme, b, 'ptq')])} / {_mean_std(quant[(scheme, b, 'qat')])}"
                f" ({np.mean(quant[(scheme, b, 'bytes')]) / 1000:.0f} kB)"
                if (scheme, b, "qat") in quant
                else ""
                for b in bits
            ]
            out.append(f"| {scheme} | " + " | ".join(cells) + " |")
        out.append("")
    front = defaultdict(list)
    for s, r in specs:
        if s["sweep"] == "pipeline":
            front[(s["method"], s["rate"], s["bits"])].append((r["file_bytes"], r["val_error"], r["test_error"]))
    if front:
        out += ["Whole pipeline to a file (iterative pruning, quantization, fine-tuning), bytes on disk:", ""]
        out += [
            "| method | pruned | avg bits | file bytes | validation error | test error |",
            "|---|---|---|---|---|---|",
        ]
        for (method, rate, b), vals in sorted(front.items()):
            nbytes, val, test = (np.asarray(v) for v in zip(*vals))
            out.append(
                f"| {method} | {rate:.1%} | {b} | {nbytes.mean():,.0f} | {_mean_std(list(val))} | "
                f"{_mean_std(list(test))} |"
            )
        out.append("")
        bases = list(results.get("bases", {}).values())
        chosen = pick(results)
        if bases:
            val, test = ([b[k] for b in bases if k in b] for k in ("val_error", "test_error"))
            tail = f", test error: {_mean_std(test)}%" if len(test) == len(bases) else ""
            out.append(f"The dense models' validation error: {_mean_std(val)}%{tail}.")
        if chosen:
            rate, err, nbytes = chosen
            out.append(
                f"The smallest fisherpack file within the error budget ({ERROR_FACTOR}x the dense models' "
                f"validation error: {100 * error_budget(results):.2f}%): {rate:.1%} pruned, {nbytes:,.0f} bytes, "
                f"{100 * err:.2f}%: the unstructured rate the ablation starts from (the defaults add its levers)."
            )
        out.append("")
    for kind in ("prune", "quant", "front"):
        png = results_dir / f"sweep_{model}_{kind}.png"
        if png.exists():
            out.append(f"![{model} {kind}](benchmarks/results/{png.name})")
    out.append("")
    return out


def render(results_dir: Path) -> str:
    lines = reference_table(results_dir)
    sweeps = [line for model in MODELS for line in sweep_tables(results_dir, model)]
    if sweeps:
        lines += [
            "The sweeps (`fisherpack sweep`, regenerate this section with `python benchmarks/readme_results.py`):",
            "",
            *sweeps,
        ]
    return "\n".join(lines).rstrip() + "\n"


def update(readme: str, results_dir: Path) -> str:
    """``readme`` with its results section made anew from the JSON in ``results_dir``."""
    return replace_section(readme, SECTION, render(results_dir))
