"""The inference benchmark runs, and the README's table is generated from its committed results."""

import json
from pathlib import Path

import torch
from helpers import benchmark_script

from fisherpack.bench import inference, report

ROOT = Path(__file__).resolve().parents[1]


_module = benchmark_script  # decode.py and scale.py stay scripts: they time whole processes


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


def test_decode_benchmark_smoke_run(tmp_path):
    threads = torch.get_num_threads()
    try:
        results = _module("decode").main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "decode.png").stat().st_size > 0
    for r in results["files"].values():
        assert r["read"]["min_ms"] <= r["read"]["median_ms"] and r["file_bytes"] <= r["file_bytes_v1"] + 2


def test_scale_benchmark_runs_every_stage_in_its_own_process(tmp_path):
    scale = _module("scale")
    r = scale.run_size("tiny", 200_000, 0, tmp_path)
    assert r["params"] == 4 * 128 * 128 * 3 + 128 * (3 + 1 + 4 + 1)  # one block of weights and biases
    for stage in ("compress", "save", "load", "load_into"):
        assert r[f"{stage}_s"] > 0 and r[f"{stage}_rss_gb"] > 0.05
    assert 0 < r["file_bytes"] < 4 * r["params"] / 10  # 90% pruned, 4 bits
    assert not list(tmp_path.iterdir())  # the file is removed


def test_readme_states_the_committed_scale_results():
    results = json.loads((ROOT / "benchmarks" / "results" / "scale.json").read_text())
    assert _module("scale").render(results) in (ROOT / "README.md").read_text()


def test_readme_quotes_the_committed_decode_results():
    files = json.loads((ROOT / "benchmarks" / "results" / "decode.json").read_text())["files"]
    readme = (ROOT / "README.md").read_text()
    lenet, mlp = files["lenet5"], files["mlp4096"]
    assert f"LeNet-5 reference file of its day ({lenet['file_bytes']:,} bytes" in readme
    assert f") in {lenet['read']['min_ms']:.2f} ms and the" in readme
    assert f"MLP file in {mlp['read']['min_ms']:.0f} ms (formerly {mlp['read_v1']['min_ms']:.0f} ms)" in readme
    ab = json.loads((ROOT / "benchmarks" / "results" / "decode.json").read_text())["ab"]
    lenet, mlp = (ab["baseline"][name]["read"]["min_ms"] for name in ("lenet5", "mlp4096"))
    assert f"same run revision {ab['baseline_rev']} took {lenet:.2f} and {mlp:.0f} ms" in readme
    lenet, mlp = (files[name]["read_no_c"]["min_ms"] for name in ("lenet5", "mlp4096"))
    assert f"without the C decoder,\n{lenet:.2f} and {mlp:.0f} ms)" in readme
