"""benchmarks/your_models.py at tiny sizes: every model through the budget search, baselines at the
chosen point, JSON, PNG and the Markdown table from the same numbers."""

import json
from pathlib import Path

import pytest
from helpers import benchmark_script

import fisherpack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _synthetic_mnist(monkeypatch):
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: fisherpack.data.synthetic(400, 400, seed=0))


def test_your_models_benchmark_runs_tiny_and_its_table_matches_its_json(tmp_path):
    bench = benchmark_script("your_models")
    assert bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "your_models.json").read_text())
    assert set(record["models"]) == {"bytelm", "dwcnn", "rowgru"} and "environment" in record
    for name, r in record["models"].items():
        assert r["points"], name
        if r["best"] is not None:
            within = [p for p in r["points"] if p["within"]]
            assert r["best"] == min(within, key=lambda p: (p["file_bytes"], p["value"]))
            assert r["ratio"] == pytest.approx(r["fp32_bytes"] / r["file_bytes"])
            assert set(r["baselines"]) == {"one-shot compress", "magnitude + uniform"}
    assert (tmp_path / "your_models.md").read_text() == bench.table(record["models"])
    assert (tmp_path / "your_models.png").stat().st_size > 1000


def test_the_readme_table_is_the_committed_json():
    bench = benchmark_script("your_models")
    record = json.loads((ROOT / "benchmarks" / "results" / "your_models.json").read_text())
    table = bench.table(record["models"])
    assert f"<!-- your_models:start -->\n{table}<!-- your_models:end -->" in (ROOT / "README.md").read_text()
    assert (ROOT / "benchmarks" / "results" / "your_models.md").read_text() == table
