"""Atomic writes: whole files or none, with ordinary permissions."""

import os
import stat

import pytest

from fisherpack.errors import FisherpackError
from fisherpack.fpk.fileio import atomic_write_bytes, atomic_writer


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_litter(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as fh:
        fh.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_unwritable_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FisherpackError, match="cannot write"):
        atomic_write_bytes(tmp_path / "missing" / "out.bin", b"x")
