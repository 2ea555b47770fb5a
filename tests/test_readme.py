"""The README's promises: its two commands, its Python example, and CI running the same tests."""

import re
from pathlib import Path

import torch

import fisherpack

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
    decoded = fisherpack.load(tmp_path / "lenet300.fpk")
    assert torch.equal(scope["small"].fc1.weight, decoded["fc1.weight"])
    assert (decoded["fc1.weight"] != 0).float().mean() < 0.11


def test_results_section_is_generated_from_the_committed_json():
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "readme_results.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert done.returncode == 0, "README results are stale: run python benchmarks/readme_results.py"


def test_default_rates_are_the_sweeps_pick():
    """reproduce's default pruning rate is the smallest fisherpack file within the error budget."""
    import importlib.util

    from fisherpack.defaults import default_config

    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "benchmarks" / "readme_results.py")
    results_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_mod)
    checked = 0
    for model in results_mod.MODELS:
        results = results_mod.load_sweep(model)
        if results is None:
            continue
        chosen = results_mod.pick(model, results)
        assert chosen is not None and default_config(model).compress.rate == chosen[0]
        checked += 1
    assert checked >= 1
