"""Outputs that never clobber (issue 16): refused targets stay untouched, clean-up spares live runs."""

from __future__ import annotations

import fcntl
import io
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from badinputs import training_checkpoint

from fisherpack.cli.main import main
from fisherpack.errors import FisherpackError
from fisherpack.fpk.fileio import atomic_write_bytes, check_writable

FAST = ["--criterion", "magnitude", "--allocation", "uniform", "--bits", "4"]  # no Fisher, no data


@pytest.fixture
def ckpt(tmp_path) -> Path:
    buf = io.BytesIO()
    torch.save(training_checkpoint(), buf)
    path = tmp_path / "m.pt"
    path.write_bytes(buf.getvalue())
    return path


def _refused(capsys, argv: list[str], match: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fisherpack: error: cannot write") and match in err, err
    return err


def _device(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("making a character device node needs root")
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    return node


def test_out_at_a_character_device_is_refused_and_the_node_stays(capsys, tmp_path, ckpt):
    node = _device(tmp_path)
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(node)], "is a character device")
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.lstat(node).st_rdev == os.makedev(1, 3)
    with pytest.raises(FisherpackError, match="character device"):  # the library's own writes too
        atomic_write_bytes(node, b"x")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_out_through_a_symlink_is_refused_unless_forced(capsys, tmp_path, ckpt):
    target, link = tmp_path / "target.fpk", tmp_path / "link.fpk"
    target.write_bytes(b"keep me")
    link.symlink_to(target)
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(link)], "is a symlink; pass --force")
    assert link.is_symlink() and target.read_bytes() == b"keep me"
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(stdout)], "is a symlink")
    assert main(["compress", str(ckpt), *FAST, "--out", str(link), "--force"]) == 0
    assert not link.is_symlink() and link.read_bytes()[:4] == b"\x89FPK" and target.read_bytes() == b"keep me"


def test_out_at_a_read_only_file_is_refused_unless_forced(capsys, tmp_path, ckpt):
    out = tmp_path / "ro.fpk"
    out.write_bytes(b"old")
    out.chmod(0o444)
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(out)], "is read-only; pass --force")
    assert out.read_bytes() == b"old"
    assert main(["compress", str(ckpt), *FAST, "--out", str(out), "--force"]) == 0
    assert out.read_bytes()[:4] == b"\x89FPK"


def test_out_at_the_input_checkpoint_is_refused_even_forced(capsys, tmp_path, ckpt):
    before = ckpt.read_bytes()
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(ckpt)], "it is the input file")
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(ckpt), "--force"], "it is the input file")
    (tmp_path / "alias.pt").symlink_to(ckpt)
    _refused(capsys, ["export", str(tmp_path / "alias.pt"), "--safetensors", str(ckpt)], "it is the input file")
    assert ckpt.read_bytes() == before


def test_a_fifo_and_an_empty_name_are_refused(capsys, tmp_path, ckpt):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _refused(capsys, ["compress", str(ckpt), *FAST, "--out", str(fifo)], "is a FIFO")
    assert main(["compress", str(ckpt), *FAST, "--out", ""]) == 1
    assert capsys.readouterr().err.strip() == "fisherpack: error: --out is empty; give a file name"
    assert not ckpt.with_suffix(".fpk").exists()  # the default name was not used instead


def test_clean_up_spares_a_live_writer_and_other_outputs(tmp_path):
    out = tmp_path / "x.fpk"
    dead, live = tmp_path / ".x.fpk.dead0000.tmp", tmp_path / ".x.fpk.live0000.tmp"
    others = [tmp_path / ".x.fpk.json.abcdefgh.tmp", tmp_path / ".x.fpk.ckpt.abcdefgh.tmp", tmp_path / ".x.fpkz.tmp"]
    for p in [dead, live, *others]:
        p.write_bytes(b"half")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a concurrent run's atomic_writer holds its temp file
        check_writable(out)
        assert not dead.exists() and live.read_bytes() == b"half"
    assert all(p.read_bytes() == b"half" for p in others)


def test_long_file_names_up_to_255_bytes_are_written(tmp_path):
    for n in (240, 250, 255):
        out = tmp_path / ("n" * (n - 4) + ".fpk")
        check_writable(out)
        atomic_write_bytes(out, b"x" * n)
        assert out.read_bytes() == b"x" * n
    assert sorted(len(p.name) for p in tmp_path.iterdir()) == [240, 250, 255]


@pytest.mark.skipif(sys.platform != "linux", reason="file names as raw bytes")
def test_a_non_utf8_out_name_is_written_and_printed_escaped(capsys, tmp_path, ckpt):
    name = os.fsdecode(b"caf\xe9\x1b[31m.fpk")  # Latin-1 e-acute and an escape sequence
    assert main(["compress", str(ckpt), *FAST, "--out", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / name).read_bytes()[:4] == b"\x89FPK"
    assert "\x1b" not in out and "caf\\udce9\\x1b[31m.fpk" in out
    out.encode("utf-8")  # printable whatever the terminal's encoding


def test_json_figures_are_strict_json_a_diverged_loss_is_null():
    from fisherpack.cli.common import json_text

    text = json_text({"test_loss": float("nan"), "ratio": float("inf"), "rows": [1.5, float("-inf")], "n": 3})
    assert text == '{"n": 3, "ratio": null, "rows": [1.5, null], "test_loss": null}'
