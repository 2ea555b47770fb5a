"""benchmarks/ablation.py at tiny sizes: each lever a real ``reproduce`` run of its own, resumed from
its JSON, the table and the README section made from the same numbers."""

import json
from pathlib import Path

from helpers import benchmark_script

ROOT = Path(__file__).resolve().parents[1]


def test_each_lever_adds_its_flags_to_the_row_above_or_the_row_it_names():
    bench = benchmark_script("ablation")
    for model, spec in bench.MODELS.items():
        rows = bench.ladder(model)
        assert [name for name, _ in rows] == ["unstructured", *(lever[0] for lever in spec["levers"])]
        for step, (_, extra, *on) in enumerate(spec["levers"], 1):
            assert bench.base(model, step) == (on[0] if on else step - 1) < step
            assert rows[step][1] == rows[bench.base(model, step)][1] + extra.split()
        assert "--quantize-biases" in rows[0][1] and "--structured" not in rows[0][1]
    rows = bench.ladder("lenet5")  # the last lever extends the 3-bit row, not the 4-QAT-epochs row above it
    assert rows[4][1] == rows[2][1] + ["--final-epochs", "5"] and rows[3][1] == rows[2][1] + ["--qat-epochs", "4"]


def test_the_ablation_runs_tiny_resumes_and_its_table_matches_its_json(tmp_path):
    bench = benchmark_script("ablation")
    argv = ["--tiny", "--only", "lenet300", "--seeds", "0", "1", "--data", "examples.rowgru:tiny_splits"]
    argv += ["--out", str(tmp_path), "--runs", str(tmp_path / "runs")]
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "ablation.json").read_text())
    runs = record["runs"]
    assert sorted((r["step"], r["seed"]) for r in runs) == [(s, seed) for s in range(3) for seed in (0, 1)]
    for r in runs:
        assert r["file_bytes"] > r["stripped_bytes"] > 0 and r["v2_bytes"] > 0 and r["cpu_seconds"] > 0
        assert 0 <= r["val"] <= 1 and 0 <= r["test"] <= 1
    # the structured row's file is made from a smaller model: fewer bytes than the unstructured row's
    by = {(r["step"], r["seed"]): r for r in runs}
    assert by[1, 0]["file_bytes"] < by[0, 0]["file_bytes"]
    summary = record["summary"]["lenet300"]
    assert summary["0"]["file_bytes"]["mean"] == (by[0, 0]["file_bytes"] + by[0, 1]["file_bytes"]) / 2
    assert (tmp_path / "ablation.md").read_text() == bench.table(record["summary"])
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    assert not list((tmp_path / "runs").glob("*.fpk*"))  # only the figures are kept

    # a second call finds every run's JSON and runs nothing: the same record
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    assert bench.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == mtimes
    assert json.loads((tmp_path / "ablation.json").read_text())["runs"] == runs


def test_the_readme_table_is_the_committed_json():
    bench = benchmark_script("ablation")
    record = json.loads((ROOT / "benchmarks" / "results" / "ablation.json").read_text())
    table = bench.table(record["summary"])
    assert f"<!-- ablation:start -->\n{table}<!-- ablation:end -->" in (ROOT / "README.md").read_text()
    assert (ROOT / "benchmarks" / "results" / "ablation.md").read_text() == table
    kept = sorted(p.name for p in (ROOT / "benchmarks" / "results" / "ablation").glob("*.json"))
    assert set(kept) >= {f"{r['model']}-{r['step']}-s{r['seed']}.json" for r in record["runs"]}
