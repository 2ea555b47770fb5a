"""Issue 11: fisherpack in the user's own loop (plugin.Pruner), the error-budget search, and the
worked examples run as written at tiny sizes."""

import pytest
import torch
from torch import nn

import fisherpack
from fisherpack.budget import Budget, Point, search
from fisherpack.errors import ConfigError
from fisherpack.fpk.tensors import QuantTensor
from fisherpack.plugin import Pruner
from fisherpack.quant import FakeQuant


@pytest.fixture(autouse=True)
def _synthetic_mnist(monkeypatch):
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: fisherpack.data.synthetic(256, 128, seed=0))


def _loop(model, pruner, optimizer, x, y, steps=4):
    for i in range(steps):
        optimizer.zero_grad()
        with pruner.batch():
            nn.functional.cross_entropy(model(x[i::steps]), y[i::steps]).backward()
        optimizer.step()
        pruner.after_step()


def test_pruner_keeps_masks_accumulates_the_fisher_and_converts_what_it_trained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y, _, _ = fisherpack.data.synthetic(64, 8, seed=0).tensors()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(model, fisherpack.CompressConfig(rate=0.8, criterion="fisher", bits=4.0))
    with pytest.raises(ConfigError, match="no Fisher yet"):
        pruner.fisher()
    opt.zero_grad()
    with pruner.batch():
        nn.functional.cross_entropy(model(x), y).backward()
    want = model[1].weight.grad.detach().double().square()
    assert torch.allclose(pruner.fisher()["1.weight"].double(), want)
    assert abs(pruner.prune(0.8) - 0.8) < 1e-3
    _loop(model, pruner, opt, x, y)  # momentum would move pruned weights without after_step
    for n, m in pruner.masks.items():
        assert int((dict(model.named_parameters())[n].detach()[~m] != 0).sum()) == 0
    layout = pruner.prepare_qat()
    _loop(model, pruner, opt, x, y)
    packed = pruner.convert()
    for n, q in packed.tensors.items():
        if isinstance(q, QuantTensor):  # the codes of the trained latent weights in the frozen layout
            latent = dict(model.named_parameters())[n].detach()
            assert torch.equal(q.dequantize(), FakeQuant(layout.tensors[n]).values(latent))
            assert q.bits == layout.tensors[n].bits and (q.mask == layout.tensors[n].mask).all()


def test_pruner_runs_qat_on_a_gru():
    torch.manual_seed(0)
    from examples.rowgru import build

    model = build(hidden=8)
    x, y, _, _ = fisherpack.data.synthetic(32, 8, seed=1).tensors()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, fisherpack.CompressConfig(rate=0.5, criterion="obd", bits=3.0), optimizer=opt)
    assert pruner.names == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"]
    _loop(model, pruner, opt, x, y)
    pruner.prune(0.5)
    pruner.prepare_qat()
    before = model.rnn.weight_hh_l0.detach().clone()
    _loop(model, pruner, opt, x, y)
    assert not torch.equal(before, model.rnn.weight_hh_l0.detach())  # the latent weights learn
    decoded = fisherpack.load_into(build(hidden=8), pruner.convert())
    assert abs(float((decoded.rnn.weight_hh_l0 == 0).float().mean()) - 0.5) < 0.1


def test_budget_search_bisects_rates_per_width_and_stops_when_a_width_fails():
    calls = []

    def fake(rate, bits):  # error grows with rate and below 4 bits; bytes shrink with both
        calls.append((rate, bits))
        value = 0.01 + (0.05 if rate > 0.9 else 0) + (0.1 if bits < 4 else 0)
        return round(10_000 * (1 - rate) * bits), value

    best, tried = search(fake, 0.01, Budget.parse("0.02"), rates=(0.5, 0.8, 0.9, 0.95, 0.99), widths=(8, 4, 3, 2))
    assert best == Point(0.9, 4.0, 4000, 0.01, True)
    assert [(p.rate, p.bits) for p in tried] == calls
    assert {b for _, b in calls} == {8.0, 4.0, 3.0}  # 2 bits never tried: 3 bits failed at every rate
    assert len([c for c in calls if c[1] == 8.0]) <= 3  # bisected, not the whole grid
    assert Budget.parse("5%").ceiling(0.2) == pytest.approx(0.21) and Budget.parse("0.05").ceiling(1.0) == 1.05
    for bad in ("x", "-1", "inf"):
        with pytest.raises(ConfigError, match="budget"):
            Budget.parse(bad)


def test_worked_example_fisherpack_drives(tmp_path):
    from examples import rowgru

    cfg = rowgru.CONFIG.replace(epochs=1, rounds=2, final_epochs=0, qat_epochs=1, batch_size=32)
    out = tmp_path / "g.fpk"
    fig = rowgru.run(cfg, hidden=8, out=str(out))
    assert fig["file_bytes"] == out.stat().st_size and fig["fp32_bytes"] == 4 * (3 * (28 * 8 + 8 * 8 + 16) + 90)
    assert 0 <= fig["val_error_file"] <= 1 and 0 <= fig["test_error_file"] <= 1
    packed = fisherpack.load(out)
    assert (
        packed.meta["pipeline"]["model"] == "examples.rowgru:build"
        and packed.meta["pipeline"]["compress"]["rate"] == 0.9
    )


def test_worked_example_your_own_loop():
    from examples import own_loop

    packed, error = own_loop.run(epochs=1, rounds=2, rate=0.8)
    quant = [q for q in packed.tensors.values() if isinstance(q, QuantTensor)]
    assert abs(1 - sum(q.kept for q in quant) / sum(q.numel for q in quant) - 0.8) < 0.01
    assert 0 <= error <= 1
