"""The command line: a tiny end-to-end run on synthetic idx files, and one-line errors."""

import json
import subprocess
import sys

import pytest

from fisherpack import data
from fisherpack.cli.main import main
from fisherpack.fpk import container as format

TINY = ["--model", "lenet300", "--epochs", "1", "--rounds", "2", "--finetune-epochs", "0.5", "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return data.write_dataset(tmp_path_factory.mktemp("idx"), data.synthetic(400, 100, seed=0))


@pytest.fixture(scope="module")
def packed(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.fpk"
    assert main(["reproduce", *TINY, "--rate", "0.9", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


def _error(capsys, argv, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_reproduce_writes_a_file_and_figures_that_agree(packed, data_dir, capsys):
    figures = json.loads(packed.with_name("tiny.fpk.json").read_text())
    assert figures["file_bytes"] == packed.stat().st_size
    assert figures["fp32_bytes"] == 4 * 266_610
    assert figures["ratio"] == pytest.approx(figures["fp32_bytes"] / figures["file_bytes"])
    assert figures["stripped_bytes"] == len(format.stripped(packed.read_bytes())) < figures["file_bytes"]
    assert figures["params"] == 266_610 and abs(figures["kept_fraction"] - 0.1) < 0.01
    assert not packed.with_name("tiny.fpk.ckpt").exists()
    capsys.readouterr()
    assert main(["eval", str(packed), "--data-dir", str(data_dir), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("test_error", "file_bytes", "fp32_bytes", "ratio", "params", "nonzero_params", "avg_bits"):
        assert again[key] == figures[key]


def test_reproduce_is_byte_for_byte_reproducible(packed, data_dir, tmp_path):
    out = tmp_path / "again.fpk"
    assert main(["reproduce", *TINY, "--rate", "0.9", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert out.read_bytes() == packed.read_bytes()


def test_inspect_lists_every_tensor(packed, capsys):
    assert main(["inspect", str(packed)]) == 0
    table = capsys.readouterr().out
    for name in ("fc1.weight", "fc1.bias", "fc3.weight"):
        assert name in table
    assert main(["inspect", str(packed), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["file_bytes"] == packed.stat().st_size
    assert sum(t["bytes"] for t in described["tensors"]) == described["payload_bytes"]


def test_train_then_compress_from_the_checkpoint(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert (
        main(
            [
                "train",
                "--model",
                "lenet300",
                "--epochs",
                "1",
                "--quiet",
                "--data-dir",
                str(data_dir),
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    out = tmp_path / "m.fpk"
    assert main(["compress", str(ckpt), "--rate", "0.8", "--bits", "4", "--out", str(out)]) == 0
    c = format.load(out)
    assert c.meta["pipeline"]["model"] == "lenet300" and c.meta["pipeline"]["compress"]["rate"] == 0.8
    assert "ratio" in capsys.readouterr().out


def test_missing_data_folder(capsys, tmp_path):
    err = _error(capsys, ["reproduce", *TINY, "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x.fpk")])
    assert err.startswith("fisherpack: error:") and "nope" in err
    assert not (tmp_path / "x.fpk").exists()


def test_truncated_corrupt_and_foreign_files(capsys, packed, tmp_path):
    blob = packed.read_bytes()
    cases = {
        "truncated.fpk": (blob[: len(blob) // 2], "truncated"),
        "corrupt.fpk": (blob[:100] + bytes([blob[100] ^ 1]) + blob[101:], "checksum"),
        "model.pt": (b"PK\x03\x04" + b"\0" * 60, "not a fisherpack file"),
        "empty.fpk": (b"", "truncated"),
        "text.fpk": (b"hello, this is a text file and not a model at all\n", "not a fisherpack file"),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for cmd in (["eval", str(path)], ["inspect", str(path)]):
            assert words in _error(capsys, cmd)


def test_missing_file_is_one_line(capsys, tmp_path):
    err = _error(capsys, ["eval", str(tmp_path / "missing.fpk")])
    assert "missing.fpk" in err


def test_unknown_model_and_bad_flags(capsys, tmp_path):
    assert "unknown model 'lenet7'" in _error(
        capsys, ["reproduce", "--model", "lenet7", "--out", str(tmp_path / "a.fpk")]
    )
    assert "rate must be in [0, 1)" in _error(capsys, ["reproduce", "--rate", "1.5", "--out", str(tmp_path / "a.fpk")])
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--frobnicate"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unwritable_output_path_fails_before_any_work(capsys, tmp_path, data_dir):
    err = _error(
        capsys, ["reproduce", *TINY, "--data-dir", str(data_dir), "--out", str(tmp_path / "no" / "dir" / "x.fpk")]
    )
    assert "does not exist" in err
    err = _error(capsys, ["reproduce", *TINY, "--data-dir", str(data_dir), "--out", str(tmp_path)])
    assert "is a directory" in err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "fisherpack", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("fisherpack ")


def test_training_choices_can_be_turned_off_from_the_command_line(data_dir, tmp_path):
    out = tmp_path / "plain.fpk"
    argv = ["reproduce", *TINY, "--augment", "0", "--distill", "0", "--data-dir", str(data_dir), "--out", str(out)]
    assert main(argv) == 0
    pipeline = format.load(out).meta["pipeline"]
    assert pipeline["augment"] == 0 and pipeline["distill"] == 0.0
