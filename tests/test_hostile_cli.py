"""Hostile but valid files and odd flags at the command line (issue 16): no traceback, nothing raw."""

from __future__ import annotations

import json

import fuzzcases as fz
import torch

from fisherpack.cli.main import main
from fisherpack.errors import FormatError
from fisherpack.fpk import container as format
from fisherpack.fpk.tensors import Compressed, RawTensor

NASTY = "x\x1b[2J\r\nfisherpack: error: fake"  # clears the screen, then prints a fake error line


def _file(tmp_path, name: str, model: str):
    path = tmp_path / "nasty.fpk"
    path.write_bytes(format.encode(Compressed({name: RawTensor(torch.zeros(2))}, {"model": model})))
    return path


def test_inspect_escapes_names_the_file_controls(tmp_path, capsys):
    path = _file(tmp_path, NASTY, NASTY + "\x07")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\r\x07")
    lines = out.splitlines()
    assert len(lines) == 6 and not any(line.startswith("fisherpack") for line in lines)
    assert lines[2].startswith("x\\x1b[2J\\r\\nfisherpack: error: fake ")
    assert lines[4] == "model: x\\x1b[2J\\r\\nfisherpack: error: fake\\x07"
    assert main(["inspect", str(path), "--json"]) == 0  # JSON escapes them itself
    assert json.loads(capsys.readouterr().out)["tensors"][0]["name"] == NASTY


def test_a_lone_surrogate_is_refused_by_every_reader():
    good = format.encode(Compressed({"b": RawTensor(torch.zeros(2))}, {"model": "m", "note": ["a"]}), version=3)
    text, payload = json.dumps(fz.header_of(good)), fz.parts(good)[1]
    for old in ('"b"', '"m"', '"a"', '"note"'):
        bad = fz.frame_json(text.replace(old, '"\\udfff"' if old != '"a"' else '"ok \\ud800"').encode(), payload)
        for reader in (format.decode, format.describe):
            try:
                reader(bad)
            except FormatError as exc:
                assert "lone UTF-16 surrogate" in str(exc)
            else:
                raise AssertionError(f"{old} -> surrogate accepted by {reader.__name__}")
    pair = fz.frame_json(text.replace('"m"', '"\\ud83d\\ude00"').encode(), payload)  # a valid pair: an emoji
    assert format.decode(pair).meta["model"] == "\U0001f600"


def test_eval_reads_only_the_test_files_and_warns_on_non_finite_outputs(tmp_path, capsys):
    from fisherpack import data, models
    from fisherpack.compression import compress
    from fisherpack.config import CompressConfig

    folder = data.write_dataset(tmp_path / "d", data.synthetic(0, 30, seed=0))
    for role in ("train_images", "train_labels"):
        (folder / data.FILES[role]).unlink()  # eval never needs them
    model = models.build("lenet300")
    cfg = CompressConfig(criterion="magnitude", allocation="uniform", bits=4)
    good, bad = tmp_path / "good.fpk", tmp_path / "nan.fpk"
    format.save(compress(model, None, cfg, meta={"model": "lenet300"}), good)
    with torch.no_grad():
        model.fc3.bias[3] = float("nan")
    format.save(compress(model, None, cfg, meta={"model": "lenet300"}), bad)
    assert main(["eval", str(good), "--data-dir", str(folder)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["eval", str(bad), "--data-dir", str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["test_loss"] is None and "NaN" not in out  # strict JSON: a NaN loss is null
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [warnings[0]] and warnings[0].startswith("fisherpack: warning: the model's outputs")


def test_compress_honours_fisher_samples_and_records_them(tmp_path):
    import io

    from badinputs import training_checkpoint

    from fisherpack import data

    folder = data.write_dataset(tmp_path / "d", data.synthetic(300, 10, seed=0))
    ckpt = tmp_path / "m.pt"
    buf = io.BytesIO()
    torch.save(training_checkpoint(), buf)
    ckpt.write_bytes(buf.getvalue())
    outs = {}
    for n in (10, 300):
        out = tmp_path / f"n{n}.fpk"
        argv = ["compress", str(ckpt), "--fisher", "empirical", "--fisher-samples", str(n), "--rate", "0.5"]
        assert main([*argv, "--data-dir", str(folder), "--out", str(out)]) == 0
        outs[n] = out.read_bytes()
        assert format.load(out).meta["pipeline"]["fisher_samples"] == n
    assert outs[10] != outs[300]


def test_inspect_refuses_every_file_load_refuses(tmp_path, capsys):
    import fuzzgen as fg
    import numpy as np

    refused = 0
    for i, data in enumerate(fg.stream_swaps(fz.mixed_file(), np.random.default_rng(16), 300)):
        try:
            format.decode(data)
        except FormatError:
            path = tmp_path / f"{i}.fpk"
            path.write_bytes(data)
            assert main(["inspect", str(path)]) == 1, i
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and err.startswith("fisherpack: error: "), err
            refused += 1
    assert refused >= 19


def test_naming_a_model_does_not_let_local_files_shadow_installed_packages(tmp_path, monkeypatch):
    import importlib.machinery
    import sys

    from fisherpack.cli import usermodel as cli_usermodel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "tqdm.py").write_text("raise SystemExit('a local file was imported')\n")
    (tmp_path / "mymodels.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    assert isinstance(cli_usermodel._model("mymodels:build"), torch.nn.Linear)  # the local module is found
    spec = importlib.machinery.PathFinder.find_spec("tqdm")
    assert spec is not None and not spec.origin.startswith(str(tmp_path))


def test_a_resume_checkpoint_with_a_flipped_bit_or_an_edit_is_refused(tmp_path):
    from fisherpack import checkpoint
    from fisherpack.config import PipelineConfig
    from fisherpack.errors import FisherpackError

    cfg = PipelineConfig()
    state = {"config": json.dumps(cfg.to_dict(), sort_keys=True), "data": "d", "fisher": torch.ones(1000)}
    path = tmp_path / "run.ckpt"
    checkpoint.save_state(path, state)
    assert torch.equal(checkpoint.load_state(path, cfg, "d")["fisher"], torch.ones(1000))
    good = path.read_bytes()
    at = good.index(torch.ones(1000).numpy().tobytes()) + 2000  # a byte of the Fisher's data
    for bad in (
        good[:at] + bytes([good[at] ^ 1]) + good[at + 1 :],
        good.replace(b"\x00\x00\x80?", b"\x00\x00\x00@", 1),
    ):
        path.write_bytes(bad)
        try:
            checkpoint.load_state(path, cfg, "d")
        except FisherpackError as exc:
            assert "checksum mismatch" in str(exc)
        else:
            raise AssertionError("a damaged checkpoint was resumed from")


def test_a_permission_problem_is_reported_as_such(tmp_path, monkeypatch, capsys):
    """Not as "truncated or corrupt" (root reads any file, so open() is made to refuse)."""
    import builtins

    from fisherpack import data
    from fisherpack.data import idx

    folder = data.write_dataset(tmp_path / "d", data.synthetic(5, 5, seed=0))
    fpk = tmp_path / "m.fpk"
    fpk.write_bytes(format.encode(Compressed({"b": RawTensor(torch.zeros(2))}, {"model": "lenet300"})))

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(idx, "open", denied, raising=False)
    try:
        data.load(folder)
    except data.DataError as exc:
        assert str(exc) == f"cannot read {folder / data.FILES['train_images']}: permission denied"
    else:
        raise AssertionError("read an unreadable file")
    from fisherpack.fpk import header

    monkeypatch.setattr(header, "open", denied, raising=False)
    assert main(["inspect", str(fpk)]) == 1
    assert capsys.readouterr().err == f"fisherpack: error: cannot read {fpk}: permission denied\n"


def test_eval_and_inspect_read_a_file_from_a_pipe(tmp_path):
    import subprocess
    import sys

    from fisherpack import data

    folder = data.write_dataset(tmp_path / "d", data.synthetic(0, 20, seed=0))
    path = tmp_path / "m.fpk"
    path.write_bytes(format.encode(Compressed({"b": RawTensor(torch.zeros(2))}, {"model": "lenet300"})))
    argv = [sys.executable, "-m", "fisherpack", "inspect", "/dev/stdin"]
    done = subprocess.run(argv, input=path.read_bytes(), capture_output=True, timeout=120)  # a real pipe
    assert done.returncode == 0 and f"file: {path.stat().st_size:,} bytes".encode() in done.stdout, done.stderr
    good = tmp_path / "good.fpk"
    from fisherpack import models
    from fisherpack.compression import compress
    from fisherpack.config import CompressConfig

    cfg = CompressConfig(criterion="magnitude", allocation="uniform", bits=4)
    format.save(compress(models.build("lenet300"), None, cfg, meta={"model": "lenet300"}), good)
    argv = [sys.executable, "-m", "fisherpack", "eval", "/dev/stdin", "--data-dir", str(folder), "--json"]
    done = subprocess.run(argv, input=good.read_bytes(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["file_bytes"] == good.stat().st_size
