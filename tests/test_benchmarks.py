"""The inference benchmark runs, and the README's table is generated from its committed results."""

import json
from pathlib import Path

import torch

from fisherpack.bench import inference, report

ROOT = Path(__file__).resolve().parents[1]


def test_inference_benchmark_smoke_run(tmp_path):
    threads = torch.get_num_threads()
    try:
        results = inference.run(tmp_path, batches=(1, 8), quick=True)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "inference.png").stat().st_size > 0
    assert json.loads((tmp_path / "inference.json").read_text()) == json.loads(json.dumps(results))
    for r in results["networks"].values():
        assert set(r["batches"]) == {"1", "8"} and r["file_bytes"] < r["fp32_bytes"] / 10
    assert results["environment"]["threads"] == 1 and results["environment"]["git_commit"]


def test_readme_table_is_generated_from_the_committed_results():
    results = json.loads((ROOT / "benchmarks" / "results" / "inference.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert report.update(readme, results) == readme, "run: python benchmarks/report.py"
    assert report.render(results) in readme
    mlp = results["networks"]["mlp4096"]
    assert abs(mlp["kept_fraction"] - 0.05) < 0.001
    for batch in ("1", "256"):  # the claim: at 95% sparsity the runtime beats dense fp32, same run
        assert mlp["batches"][batch]["runtime_ms"] < mlp["batches"][batch]["dense_ms"]
