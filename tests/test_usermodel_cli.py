"""The command line on a model that is not ours (examples/tinyres.py), and export for elsewhere."""

import json

import pytest
import torch
from torch import nn

import fisherpack
from examples import tinyres
from fisherpack.cli.main import main
from fisherpack.fpk.tensors import QuantTensor

SPEC = "examples.tinyres:build"


@pytest.fixture(autouse=True)
def _synthetic_mnist(monkeypatch):
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: fisherpack.data.synthetic(128, 64, seed=0))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint with AdamW state, and a bare state dict of the same model."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = tinyres.build()
    opt = torch.optim.AdamW(model.named_parameters(), lr=2e-3)
    x, y, _, _ = fisherpack.data.synthetic(128, 64, seed=0).tensors()
    for xb, yb in fisherpack.data.batches(x, y, 32, shuffle=True, seed=0):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, folder / "full.pt")
    torch.save(model.state_dict(), folder / "bare.pt")
    return folder


def _error(capsys, argv, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_compress_eval_inspect_and_export_a_user_model(checkpoints, tmp_path, capsys):
    out = tmp_path / "t.fpk"
    argv = ["compress", "--model", SPEC, "--checkpoint", str(checkpoints / "full.pt"), "--rate", "0.7"]
    assert main([*argv, "--override", "stem.weight:bits=8", "--out", str(out)]) == 0
    packed = fisherpack.load(out)
    assert packed.meta["model"] == SPEC and packed.meta["fisher"] == "adam"
    assert packed.tensors["stem.weight"].bits == (8,)
    assert packed.meta["config"]["overrides"] == [["stem.weight", {"bits": 8}]]
    fisherpack.load_into(tinyres.build(), out)

    capsys.readouterr()
    assert main(["eval", str(out), "--model", SPEC, "--data", "examples.tinyres:test_batches", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["model"] == SPEC and fig["test_samples"] == 64 and 0 <= fig["test_error"] <= 1
    assert main(["eval", str(out), "--model", SPEC, "--data-dir", str(_idx(tmp_path)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_samples"] == 64
    assert main(["inspect", str(out)]) == 0
    assert f"model: {SPEC}" in capsys.readouterr().out

    st, onnx_path = tmp_path / "t.safetensors", tmp_path / "t.onnx"
    argv = ["export", str(out), "--model", SPEC, "--data", "examples.tinyres:test_batches"]
    assert main([*argv, "--safetensors", str(st), "--onnx", str(onnx_path)]) == 0
    _check_safetensors(st, out)
    _check_onnx(onnx_path, out)


def _idx(folder):
    return fisherpack.data.write_dataset(folder / "idx", fisherpack.data.synthetic(128, 64, seed=0))


def _check_safetensors(path, fpk):
    from safetensors.torch import load_file  # safetensors alone: no fisherpack involved in reading

    loaded, decoded = load_file(str(path)), fisherpack.load(fpk).state_dict()
    assert list(loaded) == list(decoded) or set(loaded) == set(decoded)
    for name, t in decoded.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
        assert loaded[name].view(-1).view(torch.uint8).tolist() == t.reshape(-1).view(torch.uint8).tolist()


def _check_onnx(path, fpk):
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
    onnxruntime = pytest.importorskip("onnxruntime")  # in the test extra; without it only the checker runs
    session = onnxruntime.InferenceSession(str(path))
    model = fisherpack.load_into(tinyres.build(), fpk).eval()
    for n in (1, 5):
        x = torch.randn(n, 1, 28, 28)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_fisher_source_follows_the_checkpoint(checkpoints, tmp_path, capsys):
    bare = ["compress", "--model", SPEC, "--checkpoint", str(checkpoints / "bare.pt"), "--rate", "0.5"]
    err = _error(capsys, [*bare, "--out", str(tmp_path / "a.fpk")])
    assert "no Adam state" in err and "--data" in err
    assert main([*bare, "--data", "examples.tinyres:train_batches", "--out", str(tmp_path / "b.fpk")]) == 0
    assert fisherpack.load(tmp_path / "b.fpk").meta["fisher"] == "empirical"
    plain = ["--criterion", "magnitude", "--allocation", "uniform", "--bits", "4", "--out", str(tmp_path / "c.fpk")]
    assert main([*bare, *plain]) == 0  # magnitude + uniform: no Fisher needed, no data needed
    assert fisherpack.load(tmp_path / "c.fpk").meta["fisher"] is None
    full = ["compress", "--model", SPEC, "--checkpoint", str(checkpoints / "full.pt")]
    err = _error(capsys, [*full, "--fisher", "empirical", "--out", str(tmp_path / "e.fpk")])
    assert "--fisher empirical needs data" in err
    argv = [*full, "--fisher", "sampled", "--data", "examples.tinyres:train_batches", "--fisher-samples", "16"]
    assert main([*argv, "--out", str(tmp_path / "d.fpk")]) == 0


def test_user_model_mistakes_get_one_line_errors(checkpoints, tmp_path, capsys):
    ckpt = str(checkpoints / "full.pt")
    out = ["--out", str(tmp_path / "x.fpk")]
    cases = [
        (["--model", "nosuchpkg.mod:build", "--checkpoint", ckpt], "cannot import 'nosuchpkg.mod'"),
        (["--model", "examples.tinyres:nothing", "--checkpoint", ckpt], "has no attribute 'nothing'"),
        (["--model", "examples.tinyres", "--checkpoint", ckpt], "wants package.module:factory"),
        (["--model", "examples.tinyres:ChannelScale", "--checkpoint", ckpt], "calling examples.tinyres:ChannelScale()"),
        (["--model", "fisherpack.models:LeNet5", "--checkpoint", ckpt], "no tensor 'conv1.weight'"),
        (["--model", SPEC, "--checkpoint", str(tmp_path / "none.pt")], "does not exist"),
        (["--model", SPEC], "--checkpoint CKPT"),
        (["--model", SPEC, "--checkpoint", ckpt, "--override", "nope.*:bits=4"], "matches no compressed tensor"),
    ]
    for argv, words in cases:
        assert words in _error(capsys, ["compress", *argv, *out]), argv
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "torch.load(weights_only=True)" in _error(
        capsys, ["compress", "--model", SPEC, "--checkpoint", str(tmp_path / "junk.pt"), *out]
    )
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--model", SPEC, "--override", "stem.weight-bits-8"])
    assert exc.value.code == 2 and "--override wants" in capsys.readouterr().err


def test_files_of_user_models_need_the_model_named(checkpoints, tmp_path, capsys):
    out = tmp_path / "t.fpk"
    assert main(["compress", "--model", SPEC, "--checkpoint", str(checkpoints / "full.pt"), "--out", str(out)]) == 0
    assert "--model package.module:factory" in _error(capsys, ["eval", str(out)])
    assert "give test data" in _error(capsys, ["eval", str(out), "--model", SPEC])
    assert "--model package.module:factory" in _error(capsys, ["export", str(out), "--onnx", str(tmp_path / "o.onnx")])
    assert "nothing to export" in _error(capsys, ["export", str(out)])
    # a file of another model: the first mismatching tensor, in one line
    lenet = tmp_path / "lenet.fpk"
    fisherpack.save(fisherpack.compress(fisherpack.models.build("lenet5"), None, _uniform()), lenet)
    err = _error(capsys, ["eval", str(lenet), "--model", SPEC, "--data", "examples.tinyres:test_batches"])
    assert "no tensor 'stem.weight' that the model expects" in err


def _uniform():
    return fisherpack.CompressConfig(allocation="uniform", bits=4)


def test_registry_files_still_evaluate_with_data_hooks_and_export_onnx(tmp_path, capsys):
    path = tmp_path / "lenet.fpk"
    packed = fisherpack.compress(fisherpack.models.build("lenet300"), None, _uniform(), meta={"model": "lenet300"})
    fisherpack.save(packed, path)
    assert main(["eval", str(path), "--data", "examples.tinyres:test_batches", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "lenet300"
    assert main(["export", str(path), "--onnx", str(tmp_path / "l.onnx")]) == 0  # (1, 1, 28, 28) by default
    assert (tmp_path / "l.onnx").stat().st_size > 4 * 266_610


def test_inspect_says_what_was_compressed(checkpoints, tmp_path, capsys):
    out = tmp_path / "x.fpk"
    argv = ["compress", "--model", SPEC, "--checkpoint", str(checkpoints / "full.pt"), "--exclude", "stem.weight"]
    assert main([*argv, "--out", str(out)]) == 0
    packed = fisherpack.load(out)
    quant = [n for n, e in packed.tensors.items() if isinstance(e, fisherpack.fpk.tensors.QuantTensor)]
    raw = [n for n, e in packed.tensors.items() if isinstance(e, fisherpack.fpk.tensors.RawTensor)]
    values = sum(packed.tensors[n].numel for n in quant)
    total = values + sum(packed.tensors[n].tensor.numel() for n in raw)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (f"compressed: {len(quant)} of {len(quant) + len(raw)} tensors ({values:,} of {total:,} values); "
                    "matrices stored raw: stem.weight")  # fmt: skip
    assert "stem.weight" not in quant and len(quant) >= 4


@pytest.mark.parametrize("flag", ["--quantize-biases", "--no-quantize-biases", None])
def test_quantize_biases_is_a_flag_for_every_model(checkpoints, tmp_path, flag):
    """Biases stored raw cost 4 bytes each; a user's model reaches quantized biases by the flag (the
    registry's defaults have them on), and the file's config says which."""
    out = tmp_path / "t.fpk"
    argv = ["compress", "--model", SPEC, "--checkpoint", str(checkpoints / "full.pt"), "--rate", "0.7"]
    assert main([*argv, *([flag] if flag else []), "--out", str(out)]) == 0
    packed = fisherpack.load(out)
    on = flag == "--quantize-biases"
    biases = [n for n, p in tinyres.build().named_parameters() if p.ndim == 1]
    assert biases and all(isinstance(packed.tensors[n], QuantTensor) == on for n in biases)
    assert packed.meta["config"]["quantize_biases"] is on
