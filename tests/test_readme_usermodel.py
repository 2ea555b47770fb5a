"""The README's "Your own model" commands and Python example run as written.

Commands run in-process in a temporary folder (``python -m X`` runs module X, ``fisherpack`` runs
the CLI's main); only the data is a small synthetic stand-in for MNIST. The Python example is the
README's ```` ```py ```` block (tests/test_readme.py runs the ```` ```python ```` one).
"""

import re
import runpy
import shlex
import sys
from pathlib import Path

import torch

import fisherpack
from examples import tinyres
from fisherpack.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(lang: str, containing: str) -> str:
    (block,) = [b for b in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S) if containing in b]
    return block


def test_your_own_model_commands_and_python_example_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fisherpack.data, "load", lambda *a, **k: fisherpack.data.synthetic(256, 64, seed=0))
    commands = [shlex.split(line, comments=True) for line in _block("sh", "examples.tinyres").splitlines()]
    for argv in filter(None, commands):
        if argv[:2] == ["python", "-m"]:
            monkeypatch.setattr(sys, "argv", argv[2:])
            monkeypatch.delitem(sys.modules, argv[2], raising=False)  # run it fresh, as python -m does
            runpy.run_module(argv[2], run_name="__main__", alter_sys=False)
        else:
            assert argv[0] == "fisherpack", argv
            assert main(argv[1:]) == 0, argv
    for name in ("tinyres.pt", "tinyres.fpk", "tinyres.safetensors", "tinyres.onnx"):
        assert (tmp_path / name).stat().st_size > 0, name
    packed = fisherpack.load(tmp_path / "tinyres.fpk")
    assert packed.meta["model"] == "examples.tinyres:build" and packed.tensors["stem.weight"].bits == (8,)

    scope: dict = {}
    exec(compile(_block("py", "fisherpack.runtime"), "README.md", "exec"), scope)
    fast, decoded = scope["fast"], fisherpack.load_into(tinyres.build(), "tinyres.fpk").eval()
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(fast(x), decoded(x).detach(), rtol=1e-4, atol=1e-4)
    assert set(scope["report"]) <= {"fc1", "fc2"}  # only Linear layers are candidates
