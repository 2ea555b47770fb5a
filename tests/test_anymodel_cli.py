"""Issue 11 from the command line: reproduce on your own model, with and without an error budget."""

import json

import pytest

import fisherpack
from fisherpack.cli.main import main


@pytest.fixture(autouse=True)
def _synthetic_mnist(monkeypatch):
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: fisherpack.data.synthetic(200, 50, seed=0))


BASE = ["reproduce", "--model", "examples.rowgru:tiny", "--data", "examples.rowgru:splits", "--quiet"]


def test_reproduce_runs_the_pipeline_on_a_user_model(tmp_path, capsys):
    out = tmp_path / "g.fpk"
    assert main([*BASE, "--epochs", "1", "--rounds", "2", "--rate", "0.5", "--bits", "4", "--out", str(out)]) == 0
    fig = json.loads((tmp_path / "g.fpk.json").read_text())
    packed = fisherpack.load(out)
    assert fig["file_bytes"] == out.stat().st_size and packed.meta["pipeline"]["model"] == "examples.rowgru:tiny"
    from examples.rowgru import tiny

    model = fisherpack.load_into(tiny(), packed)
    assert abs(float((model.rnn.weight_hh_l0 == 0).float().mean()) - 0.5) < 0.15
    assert 0 <= fig["val_file"] <= 1 and 0 <= fig["test_file"] <= 1
    assert f"wrote {out}" in capsys.readouterr().out


def test_reproduce_with_a_budget_prints_the_points_and_keeps_the_smallest_within(tmp_path, capsys):
    out = tmp_path / "b.fpk"
    argv = [*BASE, "--epochs", "1", "--rounds", "1", "--budget", "1.0", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    fig = json.loads((tmp_path / "b.fpk.json").read_text())
    points = fig["points"]
    assert len([line for line in err.splitlines() if line.startswith("  rate ")]) == len(points) >= 3
    within = [p for p in points if p["within"]]
    best = min(within, key=lambda p: (p["file_bytes"], p["value"]))
    assert (fig["config"]["compress"]["rate"], fig["config"]["compress"]["bits"]) == (best["rate"], best["bits"])
    assert fig["file_bytes"] == out.stat().st_size == best["file_bytes"]


def test_user_model_reproduce_mistakes_get_one_line(tmp_path, capsys):
    for extra, words in (([], "needs its data"), (["--data", "examples.rowgru:build"], "must return"),
                         (["--data", "examples.rowgru:splits", "--budget", "lots"], "budget"),
                         (["--data", "examples.rowgru:splits", "--metric", "accuracy"], "--metric wants"),
                         (["--data", "examples.bytelm:tiny_splits"], "rowgru:tiny on examples.bytelm")):  # fmt: skip
        argv = ["reproduce", "--model", "examples.rowgru:tiny", *extra, "--out", str(tmp_path / "x.fpk")]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    argv = ["sensitivity", "--model", "examples.rowgru:tiny", "--data", "examples.bytelm:tiny_splits"]
    assert main(argv) == 1  # a model that cannot take the data: one line before training, not a traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed" in err, err


def test_the_readme_budget_command_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S) if "examples.rowgru" in b]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    for argv in filter(None, (shlex.split(line) for line in block.splitlines())):
        assert argv[0] == "fisherpack" and main(argv[1:]) == 0
    assert fisherpack.load(tmp_path / "rowgru.fpk").meta["pipeline"]["model"] == "examples.rowgru:tiny"


def test_compress_a_gru_with_a_data_fisher_notes_the_exact_path_in_one_line(tmp_path, capsys):
    import torch

    from examples.rowgru import tiny

    torch.manual_seed(0)
    torch.save(tiny().state_dict(), tmp_path / "g.pt")
    out = tmp_path / "g.fpk"
    argv = ["compress", "--model", "examples.rowgru:tiny", "--checkpoint", str(tmp_path / "g.pt"), "--rate", "0.5"]
    assert main([*argv, "--data", "examples.rowgru:splits", "--fisher-samples", "20", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fisherpack: note: per-sample gradients by torch.func.vmap failed")
    packed = fisherpack.load(out)
    assert packed.meta["fisher"] == "empirical" and "rnn.weight_hh_l0" in packed.tensors
    assert (
        main(["eval", str(out), "--model", "examples.rowgru:tiny", "--data", "examples.rowgru:splits", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["test_samples"] == 50


def test_sensitivity_of_a_user_model(capsys):
    argv = ["sensitivity", "--model", "examples.rowgru:tiny", "--data", "examples.rowgru:splits", "--epochs", "1"]
    assert main([*argv, "--rates", "0.5", "--bits", "4", "--fisher-samples", "20", "--json"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("fisherpack: note: per-sample gradients") and len(out.err.splitlines()) == 1
    result = json.loads(out.out)
    layers = {r["layer"] for r in result["rows"]}
    assert layers == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}
    assert set(result["spearman"]) == {"empirical", "adam"} and result["model"] == "examples.rowgru:tiny"
    assert len(result["rows"]) == 3 * (2 + 1)  # per layer: magnitude and obd at 0.5, 4 bits


def test_reproduce_a_language_model_from_its_checkpoint_in_bits_per_byte(tmp_path, capsys):
    import torch

    from examples.bytelm import tiny

    torch.manual_seed(0)
    torch.save({"model": tiny().state_dict()}, tmp_path / "lm.pt")
    out = tmp_path / "lm.fpk"
    argv = ["reproduce", "--model", "examples.bytelm:tiny", "--data", "examples.bytelm:tiny_splits", "--quiet"]
    argv += ["--checkpoint", str(tmp_path / "lm.pt"), "--metric", "bits_per_token", "--rounds", "1", "--rate", "0.5"]
    argv += ["--loss", "fisherpack.losses:cross_entropy"]
    assert main([*argv, "--out", str(out)]) == 0
    fig = json.loads((tmp_path / "lm.fpk.json").read_text())
    assert fig["config"]["epochs"] == 0 and fig["config"]["fisher"] == "empirical" and fig["metric"] == "bits_per_token"
    assert 0 < fig["val_file"] < 16 and fig["file_bytes"] == out.stat().st_size
    assert "in_proj_weight" in " ".join(n for n, e in fisherpack.load(out).tensors.items()
                                         if isinstance(e, fisherpack.fpk.tensors.QuantTensor))  # fmt: skip


def test_every_stage_of_the_schedule_is_reachable_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "q.fpk"
    stages = ["--final-epochs", "1", "--qat-epochs", "2", "--batch-size", "16", "--lr", "0.003"]
    argv = [
        *BASE,
        "--epochs",
        "1",
        "--rounds",
        "1",
        "--rate",
        "0.5",
        *stages,
        "--finetune-lr",
        "2e-4",
        "--qat-lr",
        "5e-5",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    recorded = fisherpack.load(out).meta["pipeline"]
    assert (recorded["final_epochs"], recorded["qat_epochs"], recorded["batch_size"]) == (1, 2, 16)
    assert (recorded["lr"], recorded["finetune_lr"], recorded["qat_lr"]) == (0.003, 2e-4, 5e-5)
    with pytest.raises(SystemExit) as info:
        main([*argv, "--qat-lr", "0", "--out", str(out)])
    assert info.value.code == 2 and "--qat-lr must be in" in capsys.readouterr().err


def test_structured_pruning_of_a_user_model_from_the_command_line_loads_smaller(tmp_path):
    out = tmp_path / "s.fpk"
    spec = ["--model", "fisherpack.models:LeNet300", "--data", "examples.rowgru:splits", "--quiet"]
    argv = ["reproduce", *spec, "--epochs", "1", "--rounds", "2", "--rate", "0.9", "--structured", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0  # was a traceback: the file was measured in the full-size model
    fig = json.loads((tmp_path / "s.fpk.json").read_text())
    model = fisherpack.load_into(fisherpack.models.build("lenet300"), out)
    assert model.fc1.out_features < 300 and fig["params"] == 266_610 and fig["stored_params"] < 266_610
    assert fig["stripped_bytes"] == len(fisherpack.fpk.container.stripped(out.read_bytes())) < out.stat().st_size
    assert 0 <= fig["val_file"] <= 1 and 0 <= fig["test_file"] <= 1


def test_a_structured_floor_leaves_every_layer_that_many_channels_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "f.fpk"
    spec = ["--model", "fisherpack.models:LeNet5", "--data", "examples.rowgru:tiny_splits", "--quiet"]
    argv = ["reproduce", *spec, "--epochs", "1", "--rounds", "1", "--rate", "0.95", "--structured", "0.95"]
    assert main([*argv, "--structured-min", "8", "--out", str(out)]) == 0
    model = fisherpack.load_into(fisherpack.models.build("lenet5"), out)
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (8, 8, 8)
    assert fisherpack.load(out).meta["pipeline"]["structured_min"] == 8
    assert main([*argv, "--out", str(tmp_path / "g.fpk")]) == 0  # without a floor: fewer
    assert "structured_min" not in fisherpack.load(tmp_path / "g.fpk").meta["pipeline"]  # the default is left out
    assert fisherpack.load_into(fisherpack.models.build("lenet5"), tmp_path / "g.fpk").conv2.out_channels < 8
    capsys.readouterr()
    assert main(["reproduce", *spec, "--structured-min", "4", "--out", str(tmp_path / "h.fpk")]) != 0
    err = capsys.readouterr().err
    assert "structured_min needs structured > 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.fpk").exists()
