"""An error budget instead of a guessed rate: the smallest file whose validation metric is within
the budget of the dense model's, searched over pruning rate and bit width.

A budget is absolute (``0.05``: at most 0.05 worse, in the metric's units, e.g. bits per byte)
or relative (``"5%"``: at most 5% worse than the dense value). Lower metric values are better.

:func:`pipeline_search` trains once, then climbs a *ladder* of rates: each rung prunes the model
of the rung below further (the Fisher re-estimated) and fine-tunes it, which is the pipeline's own
schedule of rounds, so the climb costs one pipeline run, not one per rate. Each rung is also
written at the widest width (no quantization-aware step) and measured: a point. The climb stops at
the first rung whose unquantized model is over ``slack`` (2) times the budget: a rung measured
after its short fine-tuning is worse than after the finish, but one that far over does not come
back. Then rungs are finished from the top, as the pipeline finishes a run (final fine-tuning,
quantization-aware fine-tuning), bisecting the widths for the narrowest within budget (a narrower
width never helps the metric), until two rungs (``finish``) have a point within budget; a lower
rung tries only widths narrower than the best one found above it, the only ones that can give a
smaller file. Every point is a file encoded, decoded and measured on validation: bytes are the
file's, the value is the decoded model's.

:func:`search` is the same policy for a caller who measures points another way (e.g. with
``plugin.Pruner`` in their own loop): for each width it bisects the rate grid for the highest
rate within budget, assuming a higher rate never helps at one width.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import pipeline
from .config import PipelineConfig
from .errors import ConfigError
from .fpk import container as fmt
from .fpk.tensors import Compressed
from .loading import load_into
from .losses import Loss, Metric
from .train import evaluate, measure

__all__ = ["Budget", "Point", "search", "pipeline_search", "reload_and_measure", "RATES", "WIDTHS"]

RATES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
WIDTHS = (8.0, 6.0, 5.0, 4.0, 3.0, 2.0)


@dataclass(frozen=True)
class Budget:
    """How much worse than the dense model the compressed one may be on validation."""

    limit: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"0.05"`` (absolute) or ``"5%"`` (relative); ConfigError otherwise."""
        body = text.strip()
        relative = body.endswith("%")
        try:
            value = float(body[:-1] if relative else body)
        except ValueError:
            raise ConfigError(f"a budget is a number (absolute) or a percentage like 5%, got {text!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"a budget must be finite and >= 0, got {text!r}")
        return cls(value / 100 if relative else value, relative)

    def ceiling(self, dense: float) -> float:
        """The highest metric value within budget."""
        return dense * (1 + self.limit) if self.relative else dense + self.limit

    def __str__(self) -> str:
        return f"{self.limit:.2%} relative" if self.relative else f"+{self.limit:g}"


@dataclass(frozen=True)
class Point:
    rate: float
    bits: float
    file_bytes: int
    value: float
    within: bool


def search(
    measure_point: Callable[[float, float], tuple[int, float]],
    dense: float,
    budget: Budget,
    *,
    rates: Sequence[float] = RATES,
    widths: Sequence[float] = WIDTHS,
    on_point: Callable[[Point], None] | None = None,
) -> tuple[Point | None, list[Point]]:
    """(the smallest file within budget or None, every point tried); see module docstring."""
    rates, widths = sorted(set(rates)), sorted(set(widths), reverse=True)
    if not rates or not widths:
        raise ConfigError("the budget search needs at least one rate and one width")
    ceiling = budget.ceiling(dense)
    tried: list[Point] = []

    def point(i: int, bits: float) -> Point:
        size, value = measure_point(rates[i], bits)
        p = Point(rates[i], bits, int(size), float(value), float(value) <= ceiling)
        tried.append(p)
        if on_point is not None:
            on_point(p)
        return p

    for bits in widths:
        lo, hi, best = 0, len(rates) - 1, -1  # the highest index within budget, bisected
        while lo <= hi:
            mid = (lo + hi) // 2
            if point(mid, bits).within:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best < 0:
            break  # not even the lowest rate fits at this width: narrower widths will not either
    within = [p for p in tried if p.within]
    return (min(within, key=lambda p: (p.file_bytes, p.value)) if within else None), tried


def reload_and_measure(
    compressed: Compressed, like: nn.Module, x: torch.Tensor, y: torch.Tensor, metric: Metric | None = None
) -> tuple[int, float]:
    """(bytes of the encoded file, metric of the decoded file in a copy of ``like``, given the file's
    layer sizes if structured pruning made them smaller); the error rate without ``metric``."""
    blob = fmt.encode(compressed)
    model = load_into(copy.deepcopy(like), fmt.decode(blob))
    value = evaluate(model, x, y)[0] if metric is None else measure(model, x, y, metric)
    return len(blob), value


def pipeline_search(
    cfg: PipelineConfig,
    build: Callable[[], nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    budget: Budget,
    *,
    loss: Loss | None = None,
    metric: Metric | None = None,
    start: dict[str, Any] | None = None,
    rates: Sequence[float] = RATES,
    widths: Sequence[float] = WIDTHS,
    finish: int = 2,
    slack: float = 2.0,
    on_point: Callable[[Point], None] | None = None,
) -> tuple[Point | None, list[Point], float, Compressed | None]:
    """Train once (or start from ``start``, a trained state as ``run`` takes it), climb the ladder of
    ``rates`` and finish the ``finish`` highest rungs within budget (see the module docstring).

    Returns (best point, points tried in order, dense validation value, the best point's Compressed).
    """
    rates, widths = sorted(set(rates)), sorted(set(widths), reverse=True)
    if not rates or not widths or finish < 1:
        raise ConfigError("the budget search needs at least one rate, one width and one rung to finish")
    if start is None:
        torch.manual_seed(cfg.seed)
        trained = pipeline.run(cfg, *train, *val, model=build(), loss=loss, metric=metric, until="train")
        start = {"model": trained.model.state_dict(), "optimizer": trained.optimizer.state_dict(),
                 "figures": trained.figures}  # fmt: skip
    dense_model = build()
    dense_model.load_state_dict(start["model"])
    dense = evaluate(dense_model, *val)[0] if metric is None else measure(dense_model, *val, metric)
    ceiling = budget.ceiling(dense)
    tried: list[Point] = []
    files: list[Compressed] = []  # the file of each point tried

    def run(rate: float, bits: float, state: dict[str, Any], **stage: Any) -> tuple[pipeline.Outcome, Point]:
        step = cfg.replace(rounds=1, **stage, compress=cfg.compress.replace(rate=rate, bits=bits))
        model = build()
        out = pipeline.run(step, *train, *val, model=model, loss=loss, metric=metric, start=state)
        out.compressed.meta["search"] = {"budget": str(budget), "dense": dense, "finetune_epochs": cfg.finetune_epochs,
                                         "ladder": [r for r in rates if r <= rate]}  # fmt: skip
        size, value = reload_and_measure(out.compressed, model, *val, metric=metric)  # the file as written
        point = Point(rate, bits, size, value, value <= ceiling)
        tried.append(point)
        files.append(out.compressed)
        if on_point is not None:
            on_point(point)
        return out, point

    rungs: list[tuple[float, dict[str, Any]]] = []  # (rate, state) of the rungs climbed, the top ones
    state, over = start, dense + slack * (ceiling - dense)
    for rate in rates:  # one pruning round per rung, fine-tuned; written at the widest width, no QAT
        out, _ = run(rate, widths[0], state, final_epochs=0, qat_epochs=0)
        if out.figures["test_error_pruned"] > over:
            break  # unquantized and far over budget: the finish will not bring it back, more pruning less
        state = {"model": out.model.state_dict(), "optimizer": out.optimizer.state_dict(), "masks": out.masks,
                 "figures": {}}  # fmt: skip
        rungs.append((rate, state))
        del rungs[: -(finish + 2)]  # a rung holds a model and its optimizer: keep only those to finish
    narrowest, finished = -1, 0  # index of the narrowest width within budget on a higher rung
    for rate, state in reversed(rungs):  # the pipeline's own finish: final and QAT fine-tuning
        lo, hi = narrowest + 1, len(widths) - 1  # bisect for the narrowest width within budget
        found = False
        while lo <= hi:
            mid = (lo + hi) // 2
            if run(rate, widths[mid], state, finetune_epochs=0.0)[1].within:
                narrowest, lo, found = mid, mid + 1, True
            else:
                hi = mid - 1
        finished += found
        if finished >= finish or narrowest == len(widths) - 1:
            break  # enough rungs within budget, or no narrower width left to try below
    within = [i for i, p in enumerate(tried) if p.within]
    best = min(within, key=lambda i: (tried[i].file_bytes, tried[i].value)) if within else None
    return (tried[best], tried, dense, files[best]) if best is not None else (None, tried, dense, None)
