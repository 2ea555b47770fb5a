"""Sensitivity report: oracle tests of the prediction and measurement, a quadratic problem where the
second-order prediction is (nearly) exact, Spearman's rho by hand, and the command line."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import per_sample_square_sums
from torch import nn

from fisherpack import data, fisher
from fisherpack.bench import sensitivity
from fisherpack.bench.sensitivity import SensitivityConfig, analyse, estimate, spearman
from fisherpack.cli.main import main
from fisherpack.errors import ConfigError
from fisherpack.fpk.tensors import dequantize_codes
from fisherpack.quant import quantize_group


def _tiny():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def _brute_fisher(model, x, y):
    """Mean of squared per-sample NLL gradients, one autograd pass per sample (float64)."""
    return {n: s / len(x) for n, s in per_sample_square_sums(model, x, y).items()}


def _brute_new_weight(w, f, row):
    flat, out = w.flatten().clone(), None
    if row.kind == "prune":
        score = flat.abs() if row.criterion == "magnitude" else 0.5 * f.flatten() * flat**2
        n_prune = round(row.rate * flat.numel())
        out = flat.clone()
        out[torch.sort(score, stable=True).indices[:n_prune]] = 0
    else:
        codes, exp, grid, _ = quantize_group(flat.numpy(), f.flatten().numpy(), row.bits)
        out = torch.from_numpy(dequantize_codes(codes, row.bits, exp, grid).astype(np.float64))
    return out.view(w.shape)


def _brute_loss(model, x, y):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y, reduction="mean"))


def test_prediction_and_measurement_equal_brute_force_float64():
    model, x, y = _tiny()
    x_val, y_val = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    cfg = SensitivityConfig(rates=(0.3, 0.7), criteria=("magnitude", "obd"), bits=(2, 5), fisher_samples=len(x))
    fishers = estimate(model, x, y, cfg)
    report = analyse(model, fishers, x_val, y_val, cfg)
    brute_f = _brute_fisher(model, x, y)
    base = _brute_loss(model, x_val, y_val)
    assert report.base_loss == pytest.approx(base, rel=1e-12)
    assert len(report.rows) == 2 * (2 * 2 + 2)
    params = dict(model.named_parameters())
    for row in report.rows:
        w, f = params[row.layer].detach().clone(), brute_f[row.layer]
        new = _brute_new_weight(w, f, row)
        assert row.predicted["empirical"] == pytest.approx(0.5 * float((f * (new - w) ** 2).sum()), rel=1e-10)
        with torch.no_grad():
            params[row.layer].copy_(new)
        assert row.measured == pytest.approx(_brute_loss(model, x_val, y_val) - base, rel=1e-9, abs=1e-14)
        with torch.no_grad():
            params[row.layer].copy_(w)
        assert row.changed == int((new != w).sum())
    for n, t in model.state_dict().items():  # the model is left exactly as it was
        assert torch.equal(t, before[n])


def test_adam_fisher_is_rescaled_by_the_batch_size():
    model, x, y = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for start in range(0, 40, 8):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[start : start + 8]), y[start : start + 8]).backward()
        opt.step()
    fishers = estimate(model, x, y, SensitivityConfig(), optimizer=opt, batch_size=8)
    v = fisher.from_adam(opt, model, bias_correction=True)
    assert list(fishers) == ["empirical", "adam"]
    for n in v:
        torch.testing.assert_close(fishers["adam"][n], 8 * v[n])
    w = dict(model.named_parameters())["0.weight"].detach()
    for rank_by in ("adam", "empirical"):  # the ranking Fisher also weights the quantization error
        cfg = SensitivityConfig(rates=(0.5,), criteria=("obd",), bits=(3,), rank_by=rank_by)
        report = analyse(model, fishers, x, y, cfg)
        assert report.rank_by == rank_by
        for row in report.rows[:2]:
            new = _brute_new_weight(w, fishers[rank_by]["0.weight"], row)
            expected = 0.5 * float((8 * v["0.weight"] * (new - w) ** 2).sum())
            assert row.predicted["adam"] == pytest.approx(expected, rel=1e-10)


def _gaussian_nll(output, target):
    return 0.5 * ((output.squeeze(-1) - target) ** 2).sum()


def test_quadratic_problem_predictions_match_measurements():
    # y = x . w* + N(0, 1) with independent features: the Hessian of the Gaussian NLL is diag(E x^2)
    # up to sampling noise, the empirical Fisher at the least-squares optimum is E[r^2 x^2] ~ the same,
    # and the loss is exactly quadratic with zero gradient there: 0.5 sum F delta^2 is ~ exact.
    gen = torch.Generator().manual_seed(0)
    n, d = 20_000, 6
    scales = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0], dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales
    y = x @ torch.linspace(-1.0, 1.2, d, dtype=torch.float64) + torch.randn(n, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y.unsqueeze(1)).solution.T)
    cfg = SensitivityConfig(rates=(0.2, 0.5, 0.8), criteria=("magnitude", "obd", "random"), bits=(2, 3, 4, 6))
    fishers = estimate(model, x, y, dataclasses.replace(cfg, fisher_samples=n), loss_fn=_gaussian_nll)
    report = analyse(model, fishers, x, y, cfg, loss_fn=_gaussian_nll)
    assert len(report.rows) == 9 + 4
    for row in report.rows:
        assert row.measured > 0
        assert row.predicted["empirical"] == pytest.approx(row.measured, rel=0.1), row
    assert report.correlations()["empirical"]["all"] > 0.95


def test_spearman_by_hand():
    # no ties: d = (1, 1, 1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties share the mean rank: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4), rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1.0, 2.0, 2.0, 3.0], [10, 30, 20, 40]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [2]))
    with pytest.raises(ConfigError):
        spearman([1, 2], [1, 2, 3])


def test_config_and_input_errors():
    bad_configs = (
        {"rates": (1.0,)},
        {"bits": (0,)},
        {"criteria": ("nope",)},
        {"rates": (), "bits": ()},
        {"rank_by": "x"},
    )
    for bad in bad_configs:
        with pytest.raises(ConfigError):
            SensitivityConfig(**bad)
    model, x, y = _tiny()
    with pytest.raises(ConfigError, match="no entry"):
        analyse(model, {"empirical": {}}, x, y)
    with pytest.raises(ConfigError, match="empty"):
        analyse(model, estimate(model, x, y, SensitivityConfig()), x[:0], y[:0])


def test_figure_has_one_panel_per_source():
    model, x, y = _tiny()
    opt = torch.optim.Adam(model.parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    fishers = estimate(model, x, y, SensitivityConfig(), optimizer=opt, batch_size=40)
    report = analyse(model, fishers, x, y, SensitivityConfig(rates=(0.5,), bits=(2, 6)))
    fig = sensitivity.figure(report, title="tiny")
    assert len(fig.axes) == 2


# --- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return data.write_dataset(tmp_path_factory.mktemp("idx"), data.synthetic(300, 20, seed=0))


FAST = ["--val", "100", "--fisher-samples", "50", "--rates", "0.5", "--bits", "4", "--quiet"]


def test_cli_trains_then_reports_json_and_a_plot(data_dir, tmp_path, capsys):
    plot = tmp_path / "s.png"
    argv = ["sensitivity", "--model", "lenet300", "--epochs", "1", *FAST, "--data-dir", str(data_dir)]
    assert main([*argv, "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "lenet300" and result["validation"]["held_out_from_training"] is True
    assert len(result["rows"]) == 3 * (2 + 1)  # 3 layers x (magnitude, obd at 50%; 4-bit)
    assert set(result["spearman"]) == {"empirical", "adam"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0
    assert "Spearman rank correlation" in capsys.readouterr().out


def test_cli_on_a_training_checkpoint(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    train = ["train", "--model", "lenet300", "--epochs", "1", "--quiet", "--data-dir", str(data_dir)]
    assert main([*train, "--out", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["sensitivity", str(ckpt), *FAST, "--data-dir", str(data_dir), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["validation"]["held_out_from_training"] is False
    assert "seen in training" in out.err


def _error(capsys, argv, code=1):
    assert main(argv) == code
    lines = capsys.readouterr().err.strip().splitlines()  # progress notes ("loaded N images") may come first
    assert lines[-1].startswith("fisherpack: error:") and not any("Traceback" in x for x in lines), lines
    assert sum("error" in x for x in lines) == 1, lines
    return lines[-1]


def test_cli_bad_input_is_one_line(data_dir, tmp_path, capsys):
    d = ["--data-dir", str(data_dir), "--quiet"]
    assert "not both" in _error(capsys, ["sensitivity", str(tmp_path / "m.pt"), "--model", "lenet5", *d])
    assert "does not exist" in _error(capsys, ["sensitivity", str(tmp_path / "missing.pt"), *d])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable" in _error(capsys, ["sensitivity", str(tmp_path / "junk.pt"), *d])
    assert "rates must be in (0, 1)" in _error(capsys, ["sensitivity", "--rates", "1.5", *d])
    assert "bit widths" in _error(capsys, ["sensitivity", "--bits", "0", *d])
    assert "validation size" in _error(capsys, ["sensitivity", "--val", "5000", *d])
    assert "unknown model" in _error(capsys, ["sensitivity", "--model", "lenet7", "--val", "10", *d])
    assert "does not exist" in _error(capsys, ["sensitivity", "--plot", str(tmp_path / "no" / "p.png"), *d])
    assert "nope" in _error(capsys, ["sensitivity", "--data-dir", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exc:
        main(["sensitivity", "--criteria", "bogus"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
