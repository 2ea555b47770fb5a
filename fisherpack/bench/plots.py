"""PNG plots of sweep results (matplotlib, an optional extra: ``pip install fisherpack[plots]``).

Every curve is the mean over seeds with the spread (min..max) shaded; errors are validation errors
unless a plot says otherwise. Published points come from the papers' own tables (ANCHORS below).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fpk.fileio import atomic_write_bytes

__all__ = ["ANCHORS", "group", "plot_prune", "plot_quant", "plot_front"]

# Published MNIST storage results: (label, bytes of the compressed model, test error).
# Storage ratios are against each paper's own fp32 size (LeNet-5 1,720 KB; LeNet-300-100 1,070 KB).
ANCHORS = {
    "lenet5": [
        ("Deep Compression", 44_000, 0.0074),
        ("Soft weight-sharing", 1_720_000 / 162, 0.0097),
        ("Bayesian compression", 1_720_000 / 390, 0.010),
        ("torch prune + gzip (measured)", 51_561, 0.0178),
        ("NNCF INT4 (measured)", 237_029, 0.0095),
    ],
    "lenet300": [("Deep Compression", 27_000, 0.0158)],
}


def _save(fig, path) -> None:
    """PNG bytes written atomically, like every other output: a killed run leaves no half image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'fisherpack[plots]'") from None
    return plt


def group(results: dict[str, Any], sweep: str, by: tuple[str, ...], x: str, value) -> dict[tuple, tuple]:
    """Results of one sweep grouped by the spec fields ``by``: {group: (xs, means, mins, maxs)},
    where ``value(result)`` extracts the number (None skips a point) and seeds are averaged."""
    cells: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k, result in results.items():
        spec = json.loads(k)
        if spec.get("sweep") != sweep:
            continue
        v = value(result)
        if v is not None:
            cells[tuple(spec[b] for b in by)][spec[x] if isinstance(x, str) else x(spec, result)].append(v)
    out = {}
    for g, by_x in cells.items():
        xs = sorted(by_x)
        vals = [np.asarray(by_x[v]) for v in xs]
        out[g] = (
            np.asarray(xs),
            np.array([v.mean() for v in vals]),
            np.array([v.min() for v in vals]),
            np.array([v.max() for v in vals]),
        )
    return out


def _line(ax, xs, mean, lo, hi, label, **kw) -> None:
    (line,) = ax.plot(xs, mean, marker="o", ms=3, label=label, **kw)
    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)


def plot_prune(results: dict[str, Any], model: str, path: str | Path, metric: str = "error") -> None:
    """Validation error (``metric``) against pruning rate, every method; one-shot and fine-tuned, by scope."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharey=True)
    for col, mode in enumerate(("oneshot", "finetuned")):
        curves = group(results, "prune", ("method", "scope"), "rate", lambda r, m=mode: r.get(m, {}).get("val_error"))
        for row, scope in enumerate(("global", "layer")):
            ax = axes[row][col]
            for (method, sc), (xs, mean, lo, hi) in sorted(curves.items()):
                if sc == scope:
                    _line(ax, 1 - xs, mean, lo, hi, method)
            ax.set(
                xscale="log",
                yscale="log",
                title=f"{model}: {mode}, {scope} ranking",
                xlabel="kept fraction (1 - pruning rate)",
            )
            ax.invert_xaxis()
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"validation {metric}")
    axes[1][0].set_ylabel(f"validation {metric}")
    axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_quant(results: dict[str, Any], model: str, path: str | Path, metric: str = "error") -> None:
    """Validation error (``metric``) against average code bits for every scheme, before and after fine-tuning."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, mode in zip(axes, ("ptq", "qat")):
        curves = group(
            results,
            "quant",
            ("scheme",),
            lambda s, r: round(r["avg_bits"], 2),
            lambda r, m=mode: r.get(m, {}).get("val_error"),
        )
        for (scheme,), (xs, mean, lo, hi) in sorted(curves.items()):
            _line(ax, xs, mean, lo, hi, scheme)
        title = "after quantization" if mode == "ptq" else "after fine-tuning the quantized model"
        ax.set(yscale="log", title=f"{model}: {title}", xlabel="average bits per weight (codes)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"validation {metric}")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_front(results: dict[str, Any], model: str, path: str | Path, metric: str = "error") -> None:
    """Test error (``metric``; on validation when a point has no test figure) against file bytes:
    fisherpack and magnitude + uniform (whole pipeline, mean over seeds with min..max bars), and the
    published points of other methods on the same axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cells: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_point: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    pipelines = {k: r for k, r in results.items() if json.loads(k).get("sweep") == "pipeline"}
    split = "test" if all("test_error" in r for r in pipelines.values()) else "val"
    for k, r in pipelines.items():
        spec = json.loads(k)
        by_point[(spec["method"], spec["rate"], spec["bits"])].append((r["file_bytes"], r[f"{split}_error"]))
    for (method, _, _), pts in sorted(by_point.items()):
        b, e = np.array(pts).T
        cells[method].append((b.mean(), e.mean(), e.min(), e.max()))
    for method, pts in sorted(cells.items()):
        pts.sort()
        b, e, lo, hi = np.array(pts).T
        # equal seeds: the float mean may land a hair outside min..max
        yerr = np.clip([e - lo, hi - e], 0.0, None)
        ax.errorbar(b, e, yerr=yerr, marker="o", capsize=3, label=method)
    for label, nbytes, err in ANCHORS.get(model, []) if (metric, split) == ("error", "test") else []:
        ax.scatter([nbytes], [err], marker="*", s=120, zorder=3)
        ax.annotate(label, (nbytes, err), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ylabel = f"{'test' if split == 'test' else 'validation'} {metric}"
    ax.set(xscale="log", xlabel="bytes on disk", ylabel=ylabel, title=f"{model}: size against error (whole pipeline)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
