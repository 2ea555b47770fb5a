"""Hostile but valid files and odd flags at the command line (issue 16): no traceback, nothing raw."""

from __future__ import annotations

import json

import fuzzcases as fz
import torch

from fisherpack import format
from fisherpack.cli import main
from fisherpack.tensors import Compressed, RawTensor

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
    assert len(lines) == 5 and not any(line.startswith("fisherpack") for line in lines)
    assert lines[2].startswith("x\\x1b[2J\\r\\nfisherpack: error: fake ")
    assert lines[4] == "model: x\\x1b[2J\\r\\nfisherpack: error: fake\\x07"
    assert main(["inspect", str(path), "--json"]) == 0  # JSON escapes them itself
    assert json.loads(capsys.readouterr().out)["tensors"][0]["name"] == NASTY


def test_a_lone_surrogate_is_refused_by_every_reader():
    good = format.encode(Compressed({"b": RawTensor(torch.zeros(2))}, {"model": "m", "note": ["a"]}))
    text, payload = json.dumps(fz.header_of(good)), fz.parts(good)[1]
    for old in ('"b"', '"m"', '"a"', '"note"'):
        bad = fz.frame_json(text.replace(old, '"\\udfff"' if old != '"a"' else '"ok \\ud800"').encode(), payload)
        for reader in (format.decode, format.describe):
            try:
                reader(bad)
            except format.FormatError as exc:
                assert "lone UTF-16 surrogate" in str(exc)
            else:
                raise AssertionError(f"{old} -> surrogate accepted by {reader.__name__}")
    pair = fz.frame_json(text.replace('"m"', '"\\ud83d\\ude00"').encode(), payload)  # a valid pair: an emoji
    assert format.decode(pair).meta["model"] == "\U0001f600"
