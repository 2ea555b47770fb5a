"""Killed runs lose nothing: a real ``fisherpack`` process killed with SIGKILL at a random moment and
started again with the same command ends with the same bytes as a run that was never interrupted.

The runs use the model's default settings but for 2 epochs and 2 pruning rounds, so they also go
through final fine-tuning, quantization-aware training and distillation from the dense model.
The moments are random (a seeded ``random.Random``): after the checkpoint file first appears (or is
next rewritten), plus a delay drawn from the span a run takes. What each kill interrupted is
printed, and after every kill the output file is either absent or complete: never half-written.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import badinputs
import pytest
import torch

import fisherpack
from fisherpack import data, models, pipeline
from fisherpack.errors import FisherpackError
from fisherpack.fpk import container as format

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "lenet300", "--epochs", "2", "--rounds", "2", "--finetune-epochs", "0.5", "--rate", "0.9"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return data.write_dataset(tmp_path_factory.mktemp("idx"), data.synthetic(1000, 200, seed=0))


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fisherpack", "--threads", "1", *args]


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(argv: list[str], ckpt: Path | None = None) -> float:
    """Run to completion; return how long ``ckpt`` existed (the span in which to kill the next run)."""
    p, appeared, gone = start(argv), None, None
    while p.poll() is None:
        if ckpt is not None and appeared is None and ckpt.exists():
            appeared = time.monotonic()
        if appeared is not None and gone is None and not ckpt.exists():
            gone = time.monotonic()
        time.sleep(0.002)
    _, err = p.communicate()
    assert p.returncode == 0, err.decode()
    return (gone or time.monotonic()) - appeared if appeared is not None else 0.0


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def kill_at_random(argv: list[str], ckpt: Path, out: Path, delay: float) -> str:
    """Start the command, wait until ``ckpt`` is (re)written, sleep ``delay`` s, SIGKILL it; say when."""
    before = mtime(ckpt)
    p = start(argv)
    deadline = time.monotonic() + 120
    while mtime(ckpt) == before and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    if p.returncode != -signal.SIGKILL:  # it ended by itself first
        assert p.returncode == 0, err.decode()
        return "nothing: the run had finished"
    if not ckpt.exists():
        return "the run after it wrote its output" if out.exists() else "the run before its first checkpoint"
    state = torch.load(ckpt, weights_only=True)
    return f"the run after {state['index']} checkpointed steps" if "index" in state else "the run after its Fisher"


def assert_whole_or_absent(path: Path, reference: bytes) -> None:
    if path.exists():
        assert path.read_bytes() == reference, f"{path} is half-written or different"


def test_reproduce_killed_twice_resumes_to_the_same_bytes(data_dir, tmp_path, capsys):
    ref_out, out = tmp_path / "ref" / "m.fpk", tmp_path / "killed" / "m.fpk"
    ref_out.parent.mkdir(), out.parent.mkdir()
    argv = command("reproduce", *TINY, "--quiet", "--data-dir", str(data_dir), "--out")
    span = finish([*argv, str(ref_out)], Path(f"{ref_out}.ckpt"))
    reference = ref_out.read_bytes()
    rng, ckpt = random.Random(7), Path(f"{out}.ckpt")
    for kill in range(2):  # the second kill lands in a resumed run
        what = kill_at_random([*argv, str(out)], ckpt, out, rng.uniform(0, 0.8 * span))
        with capsys.disabled():
            print(f"\nreproduce: SIGKILL {kill + 1} interrupted {what}")
        assert_whole_or_absent(out, reference)
    (out.parent / f".{out.name}.ckpt.a1b2c3d4.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    finish([*argv, str(out)])
    assert out.read_bytes() == reference
    assert not ckpt.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.fpk", "m.fpk.json"]  # no temporary files left
    meta = format.load(out).meta  # what made the file: seed, settings, library version
    assert (
        meta["pipeline"]["seed"] == 0
        and meta["pipeline"]["epochs"] == 2
        and meta["pipeline"]["compress"]["rate"] == 0.9
    )
    assert meta["fisherpack"] == fisherpack.__version__ and meta["pipeline"]["model"] == "lenet300"


def test_compress_killed_resumes_to_the_same_bytes(data_dir, tmp_path, capsys):
    trained = tmp_path / "m.pt"
    torch.save(badinputs.training_checkpoint("lenet300"), trained)  # what `fisherpack train` writes
    flags = ["--fisher", "empirical", "--rate", "0.8", "--data-dir", str(data_dir), "--out"]
    ref_out, out = tmp_path / "ref.fpk", tmp_path / "killed.fpk"
    span = finish(command("compress", str(trained), *flags, str(ref_out)), Path(f"{ref_out}.ckpt"))
    reference = ref_out.read_bytes()
    ckpt = Path(f"{out}.ckpt")
    what = kill_at_random(
        command("compress", str(trained), *flags, str(out)), ckpt, out, random.Random(3).uniform(0, 0.8 * span)
    )
    with capsys.disabled():
        print(f"\ncompress: SIGKILL interrupted {what}")
    assert_whole_or_absent(out, reference)
    finish(command("compress", str(trained), *flags, str(out)))
    assert out.read_bytes() == reference and not ckpt.exists()
    meta = format.load(out).meta
    assert meta["pipeline"]["fisher"] == "empirical" and meta["fisherpack"] == fisherpack.__version__


def test_a_checkpoint_of_other_data_or_another_model_is_refused(tmp_path):
    cfg = pipeline.default_config("lenet300").replace(epochs=1, rounds=1, fisher="empirical", fisher_samples=32)
    a, b = data.synthetic(200, 50, seed=0).tensors(), data.synthetic(200, 50, seed=1).tensors()
    ckpt = tmp_path / "run.ckpt"
    pipeline.run(cfg, *a, checkpoint=ckpt, until="train")
    with pytest.raises(FisherpackError, match="belongs to a run with other data; delete it"):
        pipeline.run(cfg, *b, checkpoint=ckpt, until="train")
    state = torch.load(ckpt, weights_only=True)
    assert state["data"] == pipeline.fingerprint(*a) and state["rng"].dtype == torch.uint8
    trained = {"model": "lenet300", "state_dict": state["model"], "optimizer": state["optimizer"]}
    fisher_ckpt = tmp_path / "compress.ckpt"
    first = pipeline.compress_checkpoint(trained, cfg, a[0], a[1], checkpoint=fisher_ckpt)
    again = pipeline.compress_checkpoint(trained, cfg, a[0], a[1], checkpoint=fisher_ckpt)  # reuses the Fisher
    assert format.encode(first) == format.encode(again)
    other = {**trained, "state_dict": models.build("lenet300").state_dict()}
    with pytest.raises(FisherpackError, match="other data or another model"):
        pipeline.compress_checkpoint(other, cfg, a[0], a[1], checkpoint=fisher_ckpt)
