"""The error-budget search (budget.py): the ladder of rates, the finish at narrower widths, and runs
from one trained start that do not disturb each other."""

import copy

import pytest
import torch

from fisherpack import data, pipeline
from fisherpack.budget import Budget, pipeline_search, reload_and_measure
from fisherpack.config import CompressConfig, PipelineConfig
from fisherpack.fpk import container as fmt
from fisherpack.models import build as build_model

CFG = PipelineConfig(model="lenet300", epochs=1, rounds=3, finetune_epochs=0.25, final_epochs=1, qat_epochs=1,
                     batch_size=50, compress=CompressConfig(criterion="obd", bits=4))  # fmt: skip
RATES, WIDTHS = (0.5, 0.8, 0.9), (5.0, 4.0, 3.0)


@pytest.fixture(scope="module")
def tensors():
    x, y, xv, yv = data.synthetic(400, 200, seed=1).tensors()
    return (x, y), (xv, yv)


@pytest.fixture(scope="module")
def start(tensors):
    torch.manual_seed(0)
    out = pipeline.run(CFG, *tensors[0], *tensors[1], until="train")
    return {"model": out.model.state_dict(), "optimizer": out.optimizer.state_dict(), "figures": {}}


def _build():
    torch.manual_seed(0)
    return build_model("lenet300")


def test_two_runs_from_one_start_give_the_same_file_and_leave_the_start_unchanged(tensors, start):
    before = copy.deepcopy(start)
    cfg = CFG.replace(compress=CFG.compress.replace(rate=0.8))
    a = pipeline.run(cfg, *tensors[0], *tensors[1], model=_build(), start=start)
    b = pipeline.run(cfg, *tensors[0], *tensors[1], model=_build(), start=start)
    assert fmt.encode(a.compressed) == fmt.encode(b.compressed)
    for (_, sa), (_, sb) in zip(before["optimizer"]["state"].items(), start["optimizer"]["state"].items()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    kept = sum(int(m.sum()) for m in a.masks.values()) / sum(m.numel() for m in a.masks.values())
    assert 0.19 < kept < 0.21  # the run reports the masks it pruned with


def test_a_generous_budget_climbs_every_rung_then_finishes_the_top_one_at_every_width(tensors, start):
    seen = []
    best, tried, dense, compressed = pipeline_search(
        CFG, _build, *tensors, Budget(10.0), start=start, rates=RATES, widths=WIDTHS, on_point=seen.append
    )
    # the ladder: each rate once, written at the widest width; then the top rung's widths bisected
    # (4 bits, then 3); the rung below would only try widths under 3 bits, and there are none
    assert [(p.rate, p.bits) for p in tried] == [(0.5, 5.0), (0.8, 5.0), (0.9, 5.0), (0.9, 4.0), (0.9, 3.0)]
    assert seen == tried and all(p.within for p in tried)
    assert best == min(tried, key=lambda p: (p.file_bytes, p.value)) and best.bits == 3.0
    size, value = reload_and_measure(compressed, _build(), *tensors[1])
    assert (size, value) == (best.file_bytes, best.value)  # the returned file is the best point's
    assert compressed.meta["search"]["ladder"] == [0.5, 0.8, 0.9]
    assert compressed.meta["search"]["budget"] == "+10"
    assert 0.0 <= dense <= 1.0


def test_the_climb_stops_at_the_first_rung_over_budget(tensors, start):
    # no room at all: the first rung's pruned model is already worse than the dense one on validation
    best, tried, dense, _ = pipeline_search(
        CFG, _build, *tensors, Budget(0.0), start=start, rates=(0.97, 0.98, 0.99), widths=WIDTHS
    )
    assert [(p.rate, p.bits) for p in tried] == [(0.97, 5.0)]
    assert best is None and tried[0].value > dense


def test_a_search_needs_a_rate_a_width_and_a_rung_to_finish(tensors, start):
    from fisherpack.errors import ConfigError

    for options in ({"rates": ()}, {"widths": ()}, {"finish": 0}):
        with pytest.raises(ConfigError, match="at least one rate"):
            pipeline_search(CFG, _build, *tensors, Budget(1.0), start=start, **options)


def test_a_top_rung_with_no_width_in_budget_hands_over_to_the_rungs_below(tensors, start, monkeypatch):
    from fisherpack import budget

    good = {(0.5, 5.0), (0.5, 4.0), (0.5, 3.0), (0.8, 5.0), (0.8, 4.0)}  # what is within budget

    def fake_measure(compressed, like, x, y, metric=None):
        c = compressed.meta["pipeline"]["compress"]
        return len(fmt.encode(compressed)), 0.0 if (c["rate"], c["bits"]) in good else 99.0

    monkeypatch.setattr(budget, "reload_and_measure", fake_measure)
    best, tried, _, compressed = pipeline_search(
        CFG, _build, *tensors, Budget(10.0), start=start, rates=RATES, widths=WIDTHS
    )
    assert [(p.rate, p.bits) for p in tried] == [
        (0.5, 5.0), (0.8, 5.0), (0.9, 5.0),  # the ladder
        (0.9, 4.0), (0.9, 5.0),  # the top rung: nothing within
        (0.8, 4.0), (0.8, 3.0),  # the next: 4 bits within, 3 over
        (0.5, 3.0),  # the last only tries narrower than 4 bits: within, and two rungs are done
    ]  # fmt: skip
    assert best == min((p for p in tried if p.within), key=lambda p: p.file_bytes)
    assert len(fmt.encode(compressed)) == best.file_bytes
