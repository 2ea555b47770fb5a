"""``fisherpack sweep --model package.module:factory --data package.module:splits``: your own model
through the same sweep as the LeNets (issue 11, item 2), resumable, keyed by its data."""

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch

import fisherpack
from fisherpack import data
from fisherpack.bench import subject, sweep
from fisherpack.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GRU = ["--model", "examples.rowgru:tiny", "--data", "examples.rowgru:splits"]


@pytest.fixture(autouse=True)
def _synthetic_mnist(monkeypatch):
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: data.synthetic(200, 50, seed=0))


def _argv(tmp_path, *extra):
    return ["sweep", *extra, "--quick", "--out", str(tmp_path / "res"), "--workdir", str(tmp_path / "w"), "--quiet"]


def _splits():
    from examples.rowgru import splits

    return splits()


def test_the_readme_sweep_of_a_gru_runs_end_to_end_then_resumes_without_recomputing(tmp_path, monkeypatch, capsys):
    (command,) = re.findall(r"`(fisherpack sweep --model examples\.rowgru:tiny [^`]*)`", README)
    readme_argv = shlex.split(command)[1:]  # as written (then in a test folder, quietly, without plots)
    assert readme_argv == ["sweep", *GRU, "--quick"]
    assert main([*readme_argv, *_argv(tmp_path)[2:], "--no-plots"]) == 0
    path = tmp_path / "res" / "sweep_examples.rowgru-tiny_quick.json"
    results = json.loads(path.read_bytes())
    assert results["complete"] and results["metric"] == "error"
    assert results["subject"]["data"] == "examples.rowgru:splits" and results["subject"]["checkpoint"] is None
    s = _splits()
    fp = subject.data_fingerprint(s["train"], s["val"], s["test"])[:16]
    specs = [json.loads(k) for k in results["points"]]
    # 8 pruning methods x 3 rates, 5 schemes x 3 widths, 2 pipeline methods at one point
    assert len(specs) == 8 * 3 + 5 * 3 + 2
    assert {(p["model"], p["data"], p["train_epochs"]) for p in specs} == {("examples.rowgru:tiny", fp, 2)}
    assert {p["defaults"] for p in specs} == set(results["settings"])
    assert results["settings"][specs[0]["defaults"]]["model"] == "examples.rowgru:tiny"
    n_val, n_test = len(s["val"][0]), len(s["test"][0])
    for k, r in results["points"].items():
        spec = json.loads(k)
        stages = [r[m] for m in ("oneshot", "finetuned", "ptq", "qat") if m in r] or [r]
        for figures in stages:  # error rates: whole numbers of wrong samples over the split
            assert math.isfinite(figures["val_error"]) and math.isfinite(figures["val_loss"])
            assert (figures["val_error"] * n_val) == pytest.approx(round(figures["val_error"] * n_val))
            assert (figures["test_error"] * n_test) == pytest.approx(round(figures["test_error"] * n_test))
        if spec["sweep"] == "prune":  # global ranking: the rate over every compressed weight
            sizes = {"rnn.weight_ih_l0": 24 * 28, "rnn.weight_hh_l0": 24 * 8, "head.weight": 10 * 8}
            assert set(r["kept"]) == set(sizes)
            kept = sum(r["kept"][n] * sizes[n] for n in sizes) / sum(sizes.values())
            assert kept == pytest.approx(1 - spec["rate"], abs=0.01)
        if spec["sweep"] == "pipeline":
            assert r["ratio"] == pytest.approx(4 * 1002 / r["file_bytes"])  # RowGRU(8): 1,002 parameters
    (base,) = results["bases"].values()
    out = capsys.readouterr().out
    assert f"dense model: val {base['val_error']:.4f}, test {base['test_error']:.4f}" in out
    assert f"examples.rowgru:tiny: {len(specs)} points in {path}" in out
    cached = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert len(cached) == 1 and cached[0].startswith("base-examples.rowgru-tiny-")

    calls = []
    monkeypatch.setattr(sweep.Sweep, "run", lambda self, spec: calls.append(spec))
    monkeypatch.setattr(fisherpack.pipeline, "run", lambda *a, **k: pytest.fail("trained again, not from the cache"))
    assert main([*_argv(tmp_path, *GRU), "--no-plots"]) == 0
    again = json.loads(path.read_bytes())
    assert calls == [] and again["points"] == results["points"] and again["bases"] == results["bases"]


def test_other_data_gets_its_own_points_and_base_model(tmp_path, monkeypatch):
    few = sweep.plan  # the first point of the plan: a pruning point, trained from a base model

    monkeypatch.setattr(sweep, "plan", lambda target, seeds, quick: few(target, seeds, quick)[:1])
    assert main([*_argv(tmp_path, *GRU), "--no-plots"]) == 0
    path = tmp_path / "res" / "sweep_examples.rowgru-tiny_quick.json"
    first = json.loads(path.read_bytes())["points"]
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: data.synthetic(200, 50, seed=1))
    assert main([*_argv(tmp_path, *GRU), "--no-plots"]) == 0
    second = json.loads(path.read_bytes())["points"]
    assert len(first) == len(second) == 1 and set(first) != set(second)
    fingerprints = [subject.data_fingerprint(*_splits_of(seed))[:16] for seed in (0, 1)]
    assert [json.loads(k)["data"] for k in (*first, *second)] == fingerprints
    stale = json.loads(path.with_name(path.stem + ".stale.json").read_bytes())["points"]
    assert stale == first  # set aside, not lost
    assert len(list((tmp_path / "w").iterdir())) == 2  # a base model per data set, none reused


def _splits_of(seed):
    from examples.rowgru import splits

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fisherpack.data, "load", lambda *a, **k: data.synthetic(200, 50, seed=seed))
        s = splits()
    return s["train"], s["val"], s["test"]


def test_registry_models_keep_their_keys():
    """The LeNets are subjects like any other, with the keys of every earlier sweep: each committed
    point's spec, with the settings hash of today's defaults, is a point of today's plan."""
    for name in ("lenet5", "lenet300"):
        committed = json.loads((ROOT / "benchmarks" / "results" / f"sweep_{name}.json").read_bytes())["points"]
        now = sweep.settings_id(name)
        then = {sweep.key({**json.loads(k), "defaults": now}) for k in committed}
        splits = subject.mnist_splits(data.synthetic(40, 10, seed=0), 10)
        planned = {sweep.key(s) for s in sweep.plan(subject.registry(name, splits))}
        assert then == planned == {sweep.key(s) for s in sweep.plan(name)}


def test_user_model_sweep_mistakes_get_one_line(tmp_path, capsys):
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    for extra, words in (
        (["--model", "examples.rowgru:tiny"], "needs its data"),
        (["--model", "nosuch.mod:f", "--data", "examples.rowgru:splits"], "cannot import 'nosuch.mod'"),
        (["--model", "examples.rowgru:nosuch", "--data", "examples.rowgru:splits"], "has no attribute 'nosuch'"),
        (["--model", "examples.rowgru:splits", "--data", "examples.rowgru:splits"], "not a torch.nn.Module"),
        ([*GRU[:2], "--data", "examples.rowgru:build"], "must return"),
        ([*GRU[:2], "--data", "examples.bytelm:tiny_splits"], "tiny_splits()['train'] failed: RuntimeError: shape"),
        ([*GRU, "--metric", "accuracy"], "--metric wants"),
        ([*GRU, "--loss", "examples.rowgru:nope"], "has no attribute 'nope'"),
        ([*GRU, "--checkpoint", str(tmp_path / "other.pt")], "checkpoint other.pt"),
        ([*GRU, "--checkpoint", str(tmp_path / "nope.pt")], "does not exist"),
    ):
        assert main(_argv(tmp_path, *extra)) == 1, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fisherpack: error: ") and words in err, err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())  # nothing trained


def test_a_language_model_from_its_checkpoint_in_bits_per_byte(tmp_path, capsys):
    from examples.bytelm import tiny, tiny_splits

    torch.manual_seed(0)
    model = tiny()
    torch.save({"model": model.state_dict()}, tmp_path / "lm.pt")
    argv = ["--model", "examples.bytelm:tiny", "--data", "examples.bytelm:tiny_splits", "--metric", "bits_per_token"]
    argv += ["--checkpoint", str(tmp_path / "lm.pt"), "--loss", "fisherpack.losses:cross_entropy"]
    assert main(_argv(tmp_path, *argv)) == 0
    stem = tmp_path / "res" / "sweep_examples.bytelm-tiny_quick"
    results = json.loads(Path(f"{stem}.json").read_bytes())
    assert results["metric"] == "bits_per_token" and results["complete"]
    specs = [json.loads(k) for k in results["points"]]
    state = fisherpack.checkpoint.fingerprint(*model.state_dict().values())[:16]
    assert {(p["checkpoint"], p["metric"], p["loss"]) for p in specs} == {
        (state, "bits_per_token", "fisherpack.losses:cross_entropy")
    }
    assert not any("train_epochs" in p or p.get("method", "").endswith("-adam") for p in specs)  # no Adam state
    assert results["settings"][specs[0]["defaults"]]["epochs"] == 0
    s = tiny_splits()
    (base,) = results["bases"].values()  # the checkpoint as it is, measured in bits per byte
    for split in ("val", "test"):
        expected = fisherpack.train.measure(model, *s[split], fisherpack.losses.bits_per_token)
        assert base[f"{split}_error"] == pytest.approx(expected, rel=1e-6)
    front = [r for k, r in results["points"].items() if json.loads(k)["sweep"] == "pipeline"]
    assert len(front) == 2 and all(0 < r["val_error"] < 16 and r["file_bytes"] > 0 for r in front)
    for kind in ("prune", "quant", "front"):
        assert Path(f"{stem}_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr()
    assert "bits_per_token (lower is better)" in out.out and out.err.count("fisherpack: note:") <= 1


def test_a_subject_without_a_test_split_is_measured_and_plotted_on_validation(tmp_path):
    from examples.rowgru import tiny
    from fisherpack.bench import plots

    s = _splits()
    target = subject.Subject("examples.rowgru:tiny", tiny, fisherpack.PipelineConfig(epochs=1), s["train"], s["val"])
    (spec,) = [p for p in sweep.plan(target, (0,), quick=True) if p.get("method") == "fisherpack"]
    result = sweep.Sweep([target], tmp_path / "w").run(spec)
    assert "test_error" not in result and 0 <= result["val_error"] <= 1
    assert result["val_error"] * len(s["val"][0]) == pytest.approx(round(result["val_error"] * len(s["val"][0])))
    plots.plot_front({sweep.key(spec): result}, target.name, tmp_path / "front.png", metric="error")
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
