"""Sweeps on synthetic data: every kind of point runs, results are keyed and resumable."""

import json

import pytest
import torch

from fisherpack import data
from fisherpack.bench import subject, sweep, sweepplan
from fisherpack.cli.main import main


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    splits = subject.mnist_splits(data.synthetic(400, 100, seed=0), 100)
    return sweep.Sweep([subject.registry("lenet300", splits)], tmp_path_factory.mktemp("work"))


def test_plans_cover_every_method_rate_scheme_and_seed():
    specs = sweep.plan("lenet5")
    prune = [s for s in specs if s["sweep"] == "prune"]
    assert {s["method"] for s in prune} == set(sweep.PRUNE_METHODS)
    assert {s["rate"] for s in prune} == set(sweepplan.PRUNE_RATES) and min(sweepplan.PRUNE_RATES) == 0.5
    assert max(sweepplan.PRUNE_RATES) == 0.995 and {s["scope"] for s in prune} == {"global", "layer"}
    assert {s["seed"] for s in specs} == {0, 1, 2}
    quant = [s for s in specs if s["sweep"] == "quant"]
    assert {s["scheme"] for s in quant} == set(sweep.QUANT_SCHEMES) and {s["bits"] for s in quant} == set(range(1, 9))
    assert len({sweep.key(s) for s in specs}) == len(specs)
    assert len(sweep.plan("lenet5", quick=True)) < len(specs) / 10


@pytest.mark.parametrize("method", ["obd-adam", "fisher-empirical", "two_stage-adam", "random"])
def test_prune_points_prune_to_the_rate_and_fine_tune(runner, method):
    spec = {
        "sweep": "prune",
        "model": "lenet300",
        "seed": 0,
        "method": method,
        "scope": "layer",
        "rate": 0.9,
        "finetune_epochs": 0.2,
    }
    result = runner.run(spec)
    assert all(abs(kept - 0.1) < 0.01 for kept in result["kept"].values())
    assert 0 <= result["oneshot"]["val_error"] <= 1 and 0 <= result["finetuned"]["test_error"] <= 1


@pytest.mark.parametrize("scheme", sweep.QUANT_SCHEMES)
def test_quant_points_meet_the_bit_budget(runner, scheme):
    result = runner.run(
        {"sweep": "quant", "model": "lenet300", "seed": 0, "scheme": scheme, "bits": 3, "qat_epochs": 0.2}
    )
    assert result["avg_bits"] <= 3 + (1 / 3 if scheme == "quantile" else 1e-9)
    assert {"ptq", "qat"} <= set(result)


def test_pipeline_points_measure_the_file(runner):
    spec = {"sweep": "pipeline", "model": "lenet300", "seed": 0, "method": "magnitude-uniform", "rate": 0.9, "bits": 4}
    spec.update(rounds=1, final_epochs=0, qat_epochs=0)
    result = runner.run(spec)
    assert result["avg_bits"] == 4 and abs(result["kept_fraction"] - 0.1) < 0.01
    assert result["ratio"] == pytest.approx(4 * 266_610 / result["file_bytes"])


def test_base_figures_are_the_dense_models_errors(runner):
    spec = {"sweep": "quant", "model": "lenet300", "seed": 0, "train_epochs": 1}
    figures = sweep.base_figures(runner, [spec, dict(spec, bits=3)])
    assert list(figures) == ["lenet300/0"]
    base = runner.base("lenet300", 0, 1)["figures"]  # measured on validation while training
    assert figures["lenet300/0"]["val_error"] == pytest.approx(base["test_error_before"])
    assert 0.0 <= figures["lenet300/0"]["test_error"] < 0.9  # a trained model, on the test images


def test_sweep_command_resumes_without_recomputing(tmp_path, monkeypatch):
    idx = data.write_dataset(tmp_path / "idx", data.synthetic(300, 60, seed=1))
    few = [
        {"sweep": "quant", "model": "lenet300", "seed": 0, "scheme": "uniform", "bits": b, "qat_epochs": 0}
        for b in (2, 4)
    ]
    monkeypatch.setattr(sweep, "plan", lambda model, seeds, quick: few)
    monkeypatch.setattr(sweep, "VAL_SIZE", 50)
    argv = [
        "sweep",
        "--model",
        "lenet300",
        "--data-dir",
        str(idx),
        "--out",
        str(tmp_path / "res"),
        "--workdir",
        str(tmp_path / "w"),
        "--quiet",
        "--no-plots",
    ]
    assert main(argv) == 0
    path = tmp_path / "res" / "sweep_lenet300.json"
    first = json.loads(path.read_text())
    assert len(first["points"]) == 2 and first["environment"]["seeds"] == [0, 1, 2] and first["complete"]
    recorded = first["settings"][sweep.settings_id("lenet300")]  # what each point's "defaults" hash stands for
    assert recorded == sweep.settings("lenet300") and recorded["compress"]["criterion"] == "obd"
    calls = []
    monkeypatch.setattr(sweep.Sweep, "run", lambda self, spec: calls.append(spec))
    assert main(argv) == 0
    assert calls == [] and json.loads(path.read_text())["points"] == first["points"]

    # other settings: the finished points are set aside, not lost, and come back with the settings
    other = [dict(spec, scheme="quantile") for spec in few]
    monkeypatch.setattr(sweep, "plan", lambda model, seeds, quick: other)
    monkeypatch.setattr(sweep.Sweep, "run", lambda self, spec: {"bits": spec["bits"]})
    assert main(argv) == 0
    stale_path = tmp_path / "res" / "sweep_lenet300.stale.json"
    assert json.loads(stale_path.read_text())["points"] == first["points"]
    assert set(json.loads(path.read_text())["points"]) == {sweep.key(s) for s in other}
    monkeypatch.setattr(sweep, "plan", lambda model, seeds, quick: few)
    calls.clear()
    monkeypatch.setattr(sweep.Sweep, "run", lambda self, spec: calls.append(spec))
    assert main(argv) == 0
    assert calls == [] and json.loads(path.read_text())["points"] == first["points"]
    assert set(json.loads(stale_path.read_text())["points"]) == {sweep.key(s) for s in other}


def test_sweep_parts_run_apart_then_merge(tmp_path, monkeypatch, capsys):
    idx = data.write_dataset(tmp_path / "idx", data.synthetic(300, 60, seed=1))

    def plan(target, seeds, quick):
        return [{"sweep": "quant", "model": target.name, "seed": s, "scheme": "uniform", "bits": 3} for s in seeds]

    monkeypatch.setattr(sweep, "plan", plan)
    monkeypatch.setattr(sweep.Sweep, "run", lambda self, spec: {"seed": spec["seed"]})
    monkeypatch.setattr(sweep, "base_figures", lambda runner, specs: {})
    monkeypatch.setattr(sweep, "VAL_SIZE", 50)
    common = ["sweep", "--model", "lenet300", "--data-dir", str(idx), "--workdir", str(tmp_path / "w"), "--quiet"]
    for seed in (0, 1, 2):
        assert main([*common, "--no-plots", "--seeds", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    parts = [str(tmp_path / f"s{seed}" / "sweep_lenet300.json") for seed in (0, 1, 2)]
    calls = []
    monkeypatch.setattr(sweep.Sweep, "run", lambda self, spec: calls.append(spec))
    assert main([*common, "--no-plots", "--out", str(tmp_path / "all"), "--merge", *parts]) == 0
    merged = json.loads((tmp_path / "all" / "sweep_lenet300.json").read_text())
    assert calls == [] and merged["complete"]
    assert sorted(p["seed"] for p in merged["points"].values()) == [0, 1, 2]
    assert [m["points"] for m in merged["merged"]] == [1, 1, 1]
    assert [m["environment"]["seeds"] for m in merged["merged"]] == [[0], [1], [2]]
    assert merged["environment"]["seeds"] == [0, 1, 2]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "all"), "--merge", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.json: no such file" in err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([*common, "--out", str(tmp_path / "all"), "--merge", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.json: not a sweep result file" in err


def test_plots_draw_every_sweep(tmp_path):
    from fisherpack.bench import plots

    points = {}
    for seed in (0, 1):
        for rate in (0.5, 0.9):
            spec = {
                "sweep": "prune",
                "model": "m",
                "seed": seed,
                "method": "magnitude",
                "scope": "global",
                "rate": rate,
                "finetune_epochs": 1,
            }
            points[sweep.key(spec)] = {
                "oneshot": {"val_error": rate / 10 + seed / 100},
                "finetuned": {"val_error": rate / 20},
            }
        for b in (2, 4):
            spec = {"sweep": "quant", "model": "m", "seed": seed, "scheme": "uniform", "bits": b, "qat_epochs": 1}
            points[sweep.key(spec)] = {"avg_bits": b, "ptq": {"val_error": 0.1 / b}, "qat": {"val_error": 0.05 / b}}
    for seed in (0, 1, 2):  # three equal errors: their float mean lies a hair above their max
        spec = {"sweep": "pipeline", "model": "m", "seed": seed, "method": "fisherpack", "rate": 0.9, "bits": 4}
        points[sweep.key(spec)] = {"file_bytes": 1000 + seed, "test_error": 0.0108}
    curves = plots.group(points, "prune", ("method", "scope"), "rate", lambda r: r["oneshot"]["val_error"])
    xs, mean, lo, hi = curves[("magnitude", "global")]
    assert list(xs) == [0.5, 0.9] and mean[0] == pytest.approx(0.055)
    assert (lo[0], hi[0]) == pytest.approx((0.05, 0.06))
    for draw in (plots.plot_prune, plots.plot_quant, plots.plot_front):
        path = tmp_path / f"{draw.__name__}.png"
        draw(points, "lenet5", path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_restored_models_start_from_the_cached_base_however_often(runner):
    """Bases are read once and kept; fine-tuning one restored copy must not move the next one's
    Adam moments (torch's load_state_dict shares the given tensors)."""
    net, opt = runner.restore("lenet300", 0, 1e-3, 1)
    before = {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
    runner.finetune("lenet300", net, opt, 0.2, seed=0, salt=1)
    _, again = runner.restore("lenet300", 0, 1e-3, 1)
    after = again.state_dict()["state"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[i][k], after[i][k]) for i in before for k in before[i])


def test_the_magnitude_baseline_never_prunes_structurally():
    """Structured pruning ranks channels by Fisher: the magnitude + uniform baseline of a pipeline point
    turns it off whatever the defaults say, and the fisherpack point keeps the defaults' setting."""
    from fisherpack.bench.sweepplan import pipeline_config
    from fisherpack.defaults import default_config

    spec = {"sweep": "pipeline", "model": "lenet5", "seed": 1, "rate": 0.98, "bits": 4}
    assert default_config("lenet5").structured > 0
    ours = pipeline_config({**spec, "method": "fisherpack"})
    base = pipeline_config({**spec, "method": "magnitude-uniform"})
    assert ours.structured == default_config("lenet5").structured and base.structured == 0.0
    assert base.compress.criterion == "magnitude" and (base.compress.rate, base.compress.bits) == (0.98, 4.0)
