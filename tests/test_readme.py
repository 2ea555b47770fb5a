"""The README's promises: its two commands, its Python example, and CI running the same tests."""

import json
import re
from pathlib import Path

import pytest
import torch

import fisherpack
from fisherpack.bench import tables

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readmes_test_command():
    setup, test = _blocks("sh")[:2]
    assert "pip install torch==2.13.0" in setup and setup.strip().endswith("fisherpack reproduce")
    assert test.strip() in (ROOT / ".ci" / "run").read_text()
    assert "pytest" in test


def test_python_example_runs_as_written(tmp_path, monkeypatch):
    """Runs the README's example verbatim; only the data is a small synthetic stand-in for MNIST."""
    (example,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: fisherpack.data.synthetic(300, 50, seed=0))
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    decoded = fisherpack.load(tmp_path / "lenet300.fpk").state_dict()
    assert torch.equal(scope["small"].fc1.weight, decoded["fc1.weight"])
    assert (decoded["fc1.weight"] != 0).float().mean() < 0.11


def test_results_section_is_generated_from_the_committed_json():
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "readme_results.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert done.returncode == 0, "README results are stale: run python benchmarks/readme_results.py"


def test_defaults_are_the_ablations_pick_on_the_sweeps_rate():
    """reproduce's defaults are the ablation's chosen row (the smallest mean file within the validation
    ceiling, benchmarks/ablation.py), whose unstructured base keeps the sweep's pick of the rate."""
    import argparse

    from helpers import benchmark_script

    from fisherpack.cli import anymodel
    from fisherpack.cli.main import _compress_config, _parser
    from fisherpack.defaults import default_config

    bench = benchmark_script("ablation")
    summary = json.loads((ROOT / "benchmarks" / "results" / "ablation.json").read_text())["summary"]
    for model in tables.MODELS:
        sweep = tables.load_sweep(ROOT / "benchmarks" / "results", model)
        base = bench.ladder(model)[0][1]
        assert sweep is not None and float(base[base.index("--rate") + 1]) == tables.pick(sweep)[0]
        step = bench.chosen(summary, model)
        assert step is not None, f"{model}: no ablation row within the validation ceiling"
        flags = bench.ladder(model)[step][1]
        args = _parser().parse_args(["reproduce", "--model", bench.MODELS[model]["factory"], *flags])
        made = anymodel._config(argparse.Namespace(**vars(args), user_model=args.model), _compress_config)
        assert made.replace(model=model) == default_config(model), model


def test_pick_is_the_smallest_file_within_the_budget_relative_to_the_dense_models():
    results_mod = tables

    def point(rate, seed, val, nbytes, method="fisherpack"):
        key = json.dumps({"sweep": "pipeline", "method": method, "rate": rate, "seed": seed}, sort_keys=True)
        return key, {"val_error": val, "file_bytes": nbytes}

    points = dict(
        [
            point(0.9, 0, 0.010, 9000),
            point(0.9, 1, 0.012, 9100),
            point(0.95, 0, 0.0138, 5000),
            point(0.95, 1, 0.0158, 5100),  # mean 1.48%: within the budget of 1.5%
            point(0.98, 0, 0.015, 3000),
            point(0.98, 1, 0.0152, 3100),  # mean 1.51%: over it
            point(0.99, 0, 0.001, 1000, method="magnitude-uniform"),  # not fisherpack's
        ]
    )
    results = {"points": points, "bases": {"m/0": {"val_error": 0.009}, "m/1": {"val_error": 0.011}}}
    assert results_mod.error_budget(results) == pytest.approx(0.015)
    rate, err, nbytes = results_mod.pick(results)
    assert (rate, nbytes) == (0.95, 5050) and err == pytest.approx(0.0148)
    assert results_mod.pick({"points": points}) is None  # no dense figures, no budget
