"""Per-layer sensitivity: the loss increase a Fisher estimate predicts, against the one measured.

For one layer changed alone, ``w -> w + delta`` (every other parameter fixed), the mean negative
log-likelihood ``L(theta) = mean_n -log p(y_n | x_n, theta)`` changes by

    L(w + delta) - L(w) = g . delta + 0.5 * delta^T H delta + O(|delta|^3).

Near a minimum of the training loss ``g ~ 0``. For a softmax (or Gaussian) output the Hessian is
the Gauss-Newton term ``J^T H_out J`` plus a term weighted by the residuals ``dL/df``; the
Gauss-Newton term *is* the Fisher ``E_{y ~ p}[grad log p grad log p^T]`` (Fisher identity:
``E_{y~p}[-hess log p] = E_{y~p}[grad log p grad log p^T]``), and the residual term vanishes in
expectation where the model fits the data. With the true labels in place of sampled ones the
*empirical* Fisher ``F_i = mean_n (d log p(y_n | x_n) / d theta_i)**2`` approximates the same
matrix for a well-fit model. Keeping only its diagonal, the prediction is

    predicted = 0.5 * sum_i F_i * delta_i**2        (float64; pruning: delta_i = -w_i, OBD)

It leaves out the gradient term (not zero on held-out data), the off-diagonal curvature (the
errors of one layer's weights are correlated, so cross terms need not cancel) and higher orders
(large deltas: 90% pruning, 2-bit codes). The *measured* increase applies exactly the same change
and evaluates ``mean_n loss_fn`` on held-out data, in eval mode, minus the value before.

Fisher estimates, a ``dict[source, dict[name, Tensor]]``; the one named ``cfg.rank_by`` (``"adam"``,
as in fisherpack's pipeline; the first one given when it is missing) ranks weights for the
Fisher-based pruning criteria and weights the quantization error when choosing the step (its
scale does not matter for either):

- ``"empirical"``: :func:`fisherpack.fisher.empirical` on ``fisher_samples`` training samples.
- ``"adam"``: Adam's bias-corrected ``exp_avg_sq`` ``v`` *times the batch size* ``B``. ``v`` is a
  running mean of squared mini-batch-mean gradients, ``E[(mean_B g)^2] = (E g)^2 + Var(g) / B``,
  which is ``~ F_emp / B`` near a minimum; ``v`` alone has the wrong scale by that factor.

Settings, per compressible layer: prune it alone to each rate with each criterion (prune.select,
ranking within the layer; weights that are already zero count as pruned), and quantize it alone
to each width: one group, its non-zero weights on the best fixed-point grid of quant.quantize_group
under the Fisher-weighted error (what compress does with one group), zeros stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import fisher as fisher_mod
from .. import prune
from ..compression import compressible
from ..config import CRITERIA
from ..data import batches
from ..errors import ConfigError
from ..fpk.tensors import MAX_BITS, dequantize_codes
from ..losses import nll_sum
from ..quant import quantize_group

__all__ = ["SensitivityConfig", "Row", "Report", "estimate", "analyse", "predicted_increase", "spearman", "figure"]

Tensors = dict[str, torch.Tensor]


# the SensitivityConfig fields a command line sets (flags left out take the defaults below)
FLAGS = ("rates", "criteria", "bits", "fisher_samples", "rank_by")


@dataclass(frozen=True)
class SensitivityConfig:
    """Which single-layer changes to try, and how many training samples the empirical Fisher uses."""

    rates: tuple[float, ...] = (0.5, 0.9)
    criteria: tuple[str, ...] = ("magnitude", "obd")
    bits: tuple[int, ...] = (2, 4, 6)
    fisher_samples: int = 1000
    seed: int = 0
    rank_by: str = "adam"

    def __post_init__(self) -> None:
        for key in ("rates", "criteria", "bits"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if not self.rates and not self.bits:
            raise ConfigError("nothing to try: give at least one pruning rate or one bit width")
        if self.rates and not self.criteria:
            raise ConfigError("pruning rates need at least one criterion")
        for r in self.rates:
            if not 0.0 < r < 1.0:
                raise ConfigError(f"pruning rates must be in (0, 1), got {r}")
        for c in self.criteria:
            if c not in CRITERIA:
                raise ConfigError(f"unknown pruning criterion {c!r}; choose from: {', '.join(CRITERIA)}")
        for b in self.bits:
            if not (isinstance(b, int) and 1 <= b <= MAX_BITS):
                raise ConfigError(f"bit widths must be whole numbers in 1..{MAX_BITS}, got {b}")
        if self.fisher_samples < 1:
            raise ConfigError(f"fisher_samples must be >= 1, got {self.fisher_samples}")
        if self.rank_by not in ("adam", "empirical"):
            raise ConfigError(f"rank_by must be adam or empirical, got {self.rank_by!r}")


@dataclass(frozen=True)
class Row:
    """One layer under one change: predicted (per Fisher source) and measured loss increase."""

    layer: str
    kind: str  # "prune" | "quantize"
    setting: str  # e.g. "obd 90%", "4-bit"
    changed: int  # weights whose value changed
    predicted: dict[str, float]
    measured: float
    criterion: str | None = None
    rate: float | None = None
    bits: int | None = None


@dataclass
class Report:
    base_loss: float  # mean loss on the held-out data before any change
    rank_by: str  # the Fisher estimate that ranked weights (OBD, fisher) and chose quantization steps
    rows: list[Row] = field(default_factory=list)

    def correlations(self) -> dict[str, dict[str, float]]:
        """Spearman's rho of predicted vs measured per Fisher source: over all rows, and per kind."""
        sources = list(self.rows[0].predicted) if self.rows else []
        out = {}
        for s in sources:
            out[s] = {}
            for kind in ("all", "prune", "quantize"):
                rows = [r for r in self.rows if kind in ("all", r.kind)]
                out[s][kind] = spearman([r.predicted[s] for r in rows], [r.measured for r in rows])
        return out

    def calibration(self) -> dict[str, dict[str, float | None]]:
        """Median of measured / predicted per Fisher source and kind, over rows measured > 0
        (1 = calibrated; > 1 = the prediction is too small)."""
        sources = list(self.rows[0].predicted) if self.rows else []
        out = {}
        for s in sources:
            out[s] = {}
            for kind in ("prune", "quantize"):
                ratios = [r.measured / r.predicted[s] for r in self.rows if r.kind == kind and r.measured > 0]
                ratios = [x for x in ratios if np.isfinite(x)]
                out[s][kind] = float(np.median(ratios)) if ratios else None
        return out

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v != v else v  # NaN is not JSON

        return {
            "base_loss": self.base_loss,
            "rank_by": self.rank_by,
            "rows": [r.__dict__ for r in self.rows],
            "spearman": {s: {k: clean(v) for k, v in c.items()} for s, c in self.correlations().items()},
            "median_measured_over_predicted": self.calibration(),
        }


def estimate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: SensitivityConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    batch_size: int | None = None,
    loss_fn=None,
) -> dict[str, Tensors]:
    """``{"empirical": ..., "adam": ...}`` (adam only with ``optimizer`` and ``batch_size``)."""
    subset = batches(x, y, 256, shuffle=True, seed=cfg.seed)
    out = {"empirical": fisher_mod.empirical(model, subset, n_samples=cfg.fisher_samples, loss_fn=loss_fn)}
    if optimizer is not None:
        if batch_size is None or batch_size < 1:
            raise ConfigError("the Adam Fisher needs the training batch size to be rescaled")
        v = fisher_mod.from_adam(optimizer, model, bias_correction=True)
        out["adam"] = {n: t * batch_size for n, t in v.items()}
    return out


def predicted_increase(fisher: torch.Tensor, delta: torch.Tensor) -> float:
    """``0.5 * sum_i F_i * delta_i**2`` in float64."""
    return float(0.5 * (fisher.double() * delta.double() ** 2).sum())


def _nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nll_sum(output, target)  # any output shape: see losses.py


@torch.no_grad()
def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, chunk: int = 1000) -> float:
    total = 0.0
    for start in range(0, len(x), chunk):
        total += float(loss_fn(model(x[start : start + chunk]), y[start : start + chunk]).double())
    return total / len(x)


def _changes(name: str, w: torch.Tensor, rank: Tensors, cfg: SensitivityConfig):
    """Yield (row fields, new weight) for every setting of one layer."""
    current = {name: w != 0}
    for criterion in cfg.criteria:
        for rate in cfg.rates:
            masks = prune.select(criterion, {name: w}, rank, rate, scope="layer", current=current, seed=cfg.seed)
            fields = {"kind": "prune", "setting": f"{criterion} {rate:.0%}", "criterion": criterion, "rate": rate}
            yield fields, w * masks[name]
    kept = (w != 0).flatten().numpy()  # (numel,) bool
    flat = w.detach().double().flatten().numpy()
    weight = rank[name].detach().double().flatten().numpy()[kept]
    for b in cfg.bits:
        codes, exp, grid, _ = quantize_group(flat[kept], weight, b)
        new = np.zeros(flat.size, dtype=np.float32)
        new[kept] = dequantize_codes(codes, b, exp, grid)
        yield {"kind": "quantize", "setting": f"{b}-bit", "bits": b}, torch.from_numpy(new).view(w.shape).to(w.dtype)


def analyse(
    model: nn.Module,
    fishers: dict[str, Tensors],
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: SensitivityConfig | None = None,
    *,
    layers: list[str] | None = None,
    loss_fn=None,
) -> Report:
    """Predict and measure the loss increase of each single-layer change (see module docstring).

    ``layers`` defaults to compress.compressible(model); ``loss_fn(output, target)`` is the summed
    negative log-likelihood of a batch (default cross-entropy on logits). ``model`` is restored
    exactly afterwards.
    """
    cfg = cfg or SensitivityConfig()
    if not fishers:
        raise ConfigError("give at least one Fisher estimate")
    if len(x_val) == 0 or len(x_val) != len(y_val):
        raise ConfigError("the held-out data is empty or its inputs and labels differ in number")
    loss_fn = loss_fn or _nll
    params = dict(model.named_parameters())
    layers = compressible(model) if layers is None else layers
    for name in layers:
        if name not in params:
            raise ConfigError(f"the model has no parameter {name!r}")
        for source, f in fishers.items():
            if name not in f or f[name].shape != params[name].shape:
                raise ConfigError(f"the {source} Fisher estimate has no entry of the right shape for {name!r}")
    rank_by = cfg.rank_by if cfg.rank_by in fishers else next(iter(fishers))
    rank = fishers[rank_by]
    was_training = model.training
    model.eval()
    try:
        report = Report(_mean_loss(model, x_val, y_val, loss_fn), rank_by)
        for name in layers:
            param = params[name]
            original = param.detach().clone()
            for fields, new in _changes(name, original, rank, cfg):
                delta = new.double() - original.double()
                predicted = {s: predicted_increase(f[name], delta) for s, f in fishers.items()}
                with torch.no_grad():
                    param.copy_(new)
                try:
                    measured = _mean_loss(model, x_val, y_val, loss_fn) - report.base_loss
                finally:
                    with torch.no_grad():
                        param.copy_(original)
                changed = int((new != original).sum())
                report.rows.append(Row(name, changed=changed, predicted=predicted, measured=measured, **fields))
    finally:
        model.train(was_training)
    return report


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size, dtype=np.float64)
    sorted_v = v[order]
    start = 0
    while start < v.size:
        stop = start
        while stop + 1 < v.size and sorted_v[stop + 1] == sorted_v[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks; NaN if undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError("spearman needs two 1-D sequences of equal length")
    if a.size < 2:
        return float("nan")
    ra, rb = _ranks(a) - (a.size + 1) / 2, _ranks(b) - (b.size + 1) / 2
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def figure(report: Report, title: str = ""):
    """A matplotlib Figure: measured vs predicted increase, log-log, one panel per Fisher source.

    Points whose measured increase is <= 0 cannot sit on a log axis: they are drawn hollow on the
    bottom edge. Needs matplotlib (the ``plots`` extra).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'fisherpack[plots]'") from None
    sources = list(report.rows[0].predicted) if report.rows else []
    fig = Figure(figsize=(5.2 * max(len(sources), 1), 4.6), layout="constrained")
    axes = fig.subplots(1, max(len(sources), 1), squeeze=False)[0]
    layers = list(dict.fromkeys(r.layer for r in report.rows))
    colors = {layer: f"C{i % 10}" for i, layer in enumerate(layers)}
    rho = report.correlations()
    positive = [r.measured for r in report.rows if r.measured > 0]
    floor = min(positive) / 10 if positive else 1e-6
    for ax, source in zip(axes, sources):
        preds = [max(r.predicted[source], 1e-300) for r in report.rows]
        lo, hi = min(min(preds), floor), max(max(preds), max(positive, default=floor))
        ax.plot([lo, hi], [lo, hi], color="0.7", lw=1, zorder=0, label="measured = predicted")
        for r, p in zip(report.rows, preds):
            marker = "o" if r.kind == "prune" else "s"
            face = colors[r.layer] if r.measured > 0 else "none"
            ax.scatter(p, max(r.measured, floor), marker=marker, facecolors=face, edgecolors=colors[r.layer], s=36)
        for layer in layers:
            ax.scatter([], [], color=colors[layer], label=layer)
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="k", label="prune (hollow: measured <= 0)")
        ax.scatter([], [], marker="s", facecolors="none", edgecolors="k", label="quantize")
        ax.set(xscale="log", yscale="log", xlabel=f"predicted increase ({source} Fisher)")
        ax.set(ylabel="measured increase of held-out loss", title=f"{source}: Spearman rho = {rho[source]['all']:.2f}")
        ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig
