"""Every bad input we know of gets one clear line, never a traceback; docs/ERRORS.md lists them all.

Each command-line case runs ``fisherpack.cli.main`` and must exit non-zero with exactly one line on
stderr; each Python case must raise a FisherpackError subclass with a one-line message. The table in
docs/ERRORS.md is generated from these runs (paths under the test's folder shown as ``DIR``): this
test fails when the two disagree. Regenerate it with ``FISHERPACK_WRITE_ERRORS=1 pytest tests/test_errors.py``.
"""

# ruff: noqa: E501  (the cases are a table: one per line)
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import badinputs
import pytest
import torch
from torch import nn

import fisherpack
from fisherpack import data, fisher, models, pipeline, prune, quant, train
from fisherpack.cli.main import main
from fisherpack.config import CompressConfig, PipelineConfig
from fisherpack.errors import FisherpackError
from fisherpack.fpk import container as format
from fisherpack.fpk.tensors import Alias, Compressed, RawTensor

DOC = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"
TINY = ["--model", "lenet300", "--epochs", "1", "--rounds", "1", "--quiet"]
R = ["reproduce", *TINY, "--data-dir", "DIR/data", "--out", "DIR/out/x.fpk"]  # fine but for what a case adds
C = ["compress", "DIR/m.pt", "--out", "DIR/out/c.fpk"]

# (command, bad input, argv with DIR for the test folder); argparse errors exit 2, the rest 1.
CLI = [
    ("reproduce", "data folder does not exist", [*R, "--data-dir", "DIR/nope"]),
    ("reproduce", "data folder is a file", [*R, "--data-dir", "DIR/afile"]),
    ("reproduce", "a data file is missing", [*R, "--data-dir", "DIR/no-test-labels"]),
    ("reproduce", "truncated idx file", [*R, "--data-dir", "DIR/truncated-idx"]),
    ("reproduce", "a label outside 0..9", [*R, "--data-dir", "DIR/labels-12"]),
    ("reproduce", "32x32 images", [*R, "--data-dir", "DIR/images-32px"]),
    ("reproduce", "199 labels for 200 images", [*R, "--data-dir", "DIR/count-mismatch"]),
    ("reproduce", "a text file named like an idx file", [*R, "--data-dir", "DIR/text-idx"]),
    ("reproduce", "an idx file of floats", [*R, "--data-dir", "DIR/float-idx"]),
    ("reproduce", "unknown model", [*R, "--model", "lenet7"]),
    ("reproduce", "rate 1", [*R, "--rate", "1"]),
    ("reproduce", "rate -0.1", [*R, "--rate", "-0.1"]),
    ("reproduce", "rate nan", [*R, "--rate", "nan"]),
    ("reproduce", "bits 0", [*R, "--bits", "0"]),
    ("reproduce", "bits 17", [*R, "--bits", "17"]),
    ("reproduce", "0 groups", [*R, "--groups", "0"]),
    ("reproduce", "17 groups", [*R, "--groups", "17"]),
    ("reproduce", "uniform allocation with 4.5 bits", [*R, "--allocation", "uniform", "--bits", "4.5"]),
    ("reproduce", "epochs -1", [*R, "--epochs", "-1"]),
    ("reproduce", "0 rounds", [*R, "--rounds", "0"]),
    ("reproduce", "fine-tuning epochs -1", [*R, "--finetune-epochs", "-1"]),
    ("reproduce", "output folder does not exist", [*R, "--out", "DIR/nope/x.fpk"]),
    ("reproduce", "output is a directory", [*R, "--out", "DIR/out"]),
    ("reproduce", "output folder is a file", [*R, "--out", "DIR/afile/x.fpk"]),
    ("reproduce", "output folder not writable", [*R, "--out", "/sys/x.fpk"]),
    ("reproduce", "a damaged checkpoint OUT.ckpt", [*R, "--out", "DIR/run.fpk"]),
    ("reproduce", "OUT.ckpt from a run with other settings", [*R, "--out", "DIR/other.fpk"]),
    ("reproduce", "--threads 0", ["--threads", "0", *R]),
    ("reproduce", "an unknown flag", [*R, "--frobnicate"]),
    ("reproduce", "rate not a number", [*R, "--rate", "abc"]),
    ("reproduce", "unknown criterion", [*R, "--criterion", "size"]),
    ("train", "output is a directory", ["train", *TINY[:4], "--data-dir", "DIR/data", "--out", "DIR/out"]),
    ("train", "epochs -1", ["train", *TINY[:2], "--epochs", "-1", "--out", "DIR/out/m.pt"]),
    ("compress", "checkpoint does not exist", ["compress", "DIR/nope.pt"]),
    ("compress", "checkpoint is a directory", ["compress", "DIR/out"]),
    ("compress", "checkpoint is not a PyTorch file", [*C[:1], "DIR/garbage.pt", *C[2:]]),
    ("compress", "a .fpk file given as checkpoint", [*C[:1], "DIR/m.fpk", *C[2:]]),
    ("compress", "a PyTorch file not from `fisherpack train`", [*C[:1], "DIR/tensor.pt", *C[2:]]),
    ("compress", "checkpoint says lenet5, holds lenet300", [*C[:1], "DIR/other-model.pt", *C[2:]]),
    ("compress", "no Adam state, Fisher from Adam", [*C[:1], "DIR/no-adam.pt", *C[2:]]),
    ("compress", "a NaN weight", [*C[:1], "DIR/nan.pt", *C[2:]]),
    ("compress", "rate 1.5", [*C, "--rate", "1.5"]),
    ("compress", "bits 0", [*C, "--bits", "0"]),
    ("compress", "output folder not writable", [*C[:2], "--out", "/sys/c.fpk"]),
    ("compress", "empirical Fisher, data folder missing", [*C, "--fisher", "empirical", "--data-dir", "DIR/nope"]),
    (
        "compress",
        "your model: a module that does not exist",
        ["compress", "--model", "nosuch.mod:f", "--checkpoint", "DIR/m.pt"],
    ),
    ("compress", "your model: not callable", ["compress", "--model", "os:sep", "--checkpoint", "DIR/m.pt"]),
    (
        "compress",
        "your model: no such attribute",
        ["compress", "--model", "fisherpack.models:nope", "--checkpoint", "DIR/m.pt"],
    ),
    ("compress", "your model: no --checkpoint", ["compress", "--model", "fisherpack.models:LeNet300"]),
    (
        "compress",
        "your model: checkpoint does not exist",
        ["compress", "--model", "fisherpack.models:LeNet300", "--checkpoint", "DIR/nope.pt"],
    ),
    ("eval", "file does not exist", ["eval", "DIR/nope.fpk"]),
    ("eval", "a directory", ["eval", "DIR/out"]),
    ("eval", "empty file", ["eval", "DIR/empty.fpk"]),
    ("eval", "truncated file", ["eval", "DIR/truncated.fpk"]),
    ("eval", "one bit flipped", ["eval", "DIR/corrupt.fpk"]),
    ("eval", "a torch.save zip", ["eval", "DIR/zip.fpk"]),
    ("eval", "a text file", ["eval", "DIR/text.fpk"]),
    ("eval", "format version 5", ["eval", "DIR/v5.fpk"]),
    ("eval", "NaN in the header JSON (valid CRC)", ["eval", "DIR/nan-meta.fpk"]),
    ("eval", "2**20 + 1 entries in a 138-byte file", ["eval", "DIR/too-many.fpk"]),
    ("eval", "a model fisherpack cannot rebuild", ["eval", "DIR/unknown-model.fpk"]),
    ("eval", "tensors of another model", ["eval", "DIR/wrong-tensors.fpk"]),
    ("eval", "data folder does not exist", ["eval", "DIR/m.fpk", "--data-dir", "DIR/nope"]),
    ("eval", "a label outside 0..9", ["eval", "DIR/m.fpk", "--data-dir", "DIR/labels-12"]),
    (
        "eval",
        "your model: a module that does not exist",
        ["eval", "DIR/m.fpk", "--model", "nosuch:f", "--data-dir", "DIR/data"],
    ),
    ("export", "nothing to export", ["export", "DIR/m.fpk"]),
    ("export", "file does not exist", ["export", "DIR/nope.fpk", "--safetensors", "DIR/out/m.st"]),
    ("export", "a truncated file", ["export", "DIR/truncated.fpk", "--safetensors", "DIR/out/m.st"]),
    ("export", "output folder not writable", ["export", "DIR/m.fpk", "--safetensors", "/sys/m.st"]),
    ("sweep", "unknown model", ["sweep", "--model", "lenet7", "--out", "DIR/out", "--workdir", "DIR/out"]),
    (
        "sweep",
        "seeds not numbers",
        ["sweep", "--model", "lenet300", "--seeds", "0,a", "--out", "DIR/out", "--workdir", "DIR/out"],
    ),
    (
        "sweep",
        "--merge file does not exist",
        ["sweep", "--model", "lenet300", "--out", "DIR/out", "--workdir", "DIR/out", "--merge", "DIR/nope.json"],
    ),
    (
        "sweep",
        "--merge file is not sweep results",
        ["sweep", "--model", "lenet300", "--out", "DIR/out", "--workdir", "DIR/out", "--merge", "DIR/afile"],
    ),
    ("inspect", "file does not exist", ["inspect", "DIR/nope.fpk"]),
    ("inspect", "truncated file", ["inspect", "DIR/truncated.fpk"]),
    ("inspect", "a torch.save zip", ["inspect", "DIR/zip.fpk"]),
    ("inspect", "an empty header stream (valid CRC)", ["inspect", "DIR/no-header.fpk"]),
    ("inspect", "more entries than --max-elements", ["inspect", "DIR/m.fpk", "--max-elements", "1000"]),
]


CLI += badinputs.CLI_MORE
CLI += [  # your own model in fisherpack sweep (issue 11)
    ("sweep", "your model without --data", ["sweep", "--model", "examples.rowgru:tiny", "--out", "DIR/out"]),
    (
        "sweep",
        "your data function returns no splits",
        ["sweep", "--model", "examples.rowgru:tiny", "--data", "examples.rowgru:build", "--out", "DIR/out"],
    ),
    (
        "sweep",
        "your model cannot run on your data",
        ["sweep", "--model", "examples.rowgru:tiny", "--data", "examples.bytelm:tiny_splits", "--out", "DIR/out"],
    ),
    (
        "reproduce",
        "your model cannot run on your data",
        ["reproduce", "--model", "examples.rowgru:tiny", "--data", "examples.bytelm:tiny_splits", "--out", "DIR/x.fpk"],
    ),
    (
        "sensitivity",
        "your model cannot run on your data",
        ["sensitivity", "--model", "examples.rowgru:tiny", "--data", "examples.bytelm:tiny_splits"],
    ),
    (
        "reproduce",
        "a structured fraction of 1",
        ["reproduce", "--structured", "1", "--epochs", "1", "--out", "DIR/x.fpk"],
    ),
]


def _model(**weights: float) -> nn.Module:
    m = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        for value in weights.values():
            m[0].weight[0, 0] = value
    return m


def _f(m: nn.Module, **change) -> dict:
    out = {n: torch.ones_like(p) for n, p in m.named_parameters()}
    out.update(change)
    return out


M = _model()
X, Y, Y12 = torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long), torch.full((8,), 12)
# (call, bad input, function of the test folder); each must raise a FisherpackError.
API = [
    ("fisherpack.compress", "a model with no weights to compress", lambda d: fisherpack.compress(nn.ReLU(), None)),
    ("fisherpack.compress", "a NaN weight", lambda d: fisherpack.compress(_model(w=float("nan")), _f(M))),
    ("fisherpack.compress", "an Inf weight", lambda d: fisherpack.compress(_model(w=float("inf")), _f(M))),
    ("fisherpack.compress", "no Fisher, criterion obd", lambda d: fisherpack.compress(M, None, CompressConfig(rate=0.5))),
    ("fisherpack.compress", "no Fisher, waterfill allocation", lambda d: fisherpack.compress(M, None)),
    ("fisherpack.compress", "Fisher without a weight's entry", lambda d: fisherpack.compress(M, {})),
    ("fisherpack.compress", "Fisher of the wrong shape", lambda d: fisherpack.compress(M, _f(M, **{"0.weight": torch.ones(2)}))),
    ("fisherpack.compress", "a NaN in the Fisher", lambda d: fisherpack.compress(M, _f(M, **{"0.weight": torch.full((3, 4), float("nan"))}))),
    ("fisherpack.compress", "a negative Fisher", lambda d: fisherpack.compress(M, _f(M, **{"0.weight": -torch.ones(3, 4)}))),
    ("fisherpack.compress", "masks of the wrong shape", lambda d: fisherpack.compress(M, _f(M), masks={"0.weight": torch.ones(4, 3, dtype=torch.bool)})),
    ("fisherpack.compress", "float masks", lambda d: fisherpack.compress(M, _f(M), masks={"0.weight": torch.ones(3, 4)})),
    ("fisherpack.compress", "config given as a dict", lambda d: fisherpack.compress(M, _f(M), {"rate": 0.5})),
    ("CompressConfig", "rate 1.0", lambda d: CompressConfig(rate=1.0)),
    ("CompressConfig", "rate nan", lambda d: CompressConfig(rate=float("nan"))),
    ("CompressConfig", "rate True", lambda d: CompressConfig(rate=True)),
    ("CompressConfig", "bits 0", lambda d: CompressConfig(bits=0)),
    ("CompressConfig", "bits 17", lambda d: CompressConfig(bits=17)),
    ("CompressConfig", "bits inf", lambda d: CompressConfig(bits=float("inf"))),
    ("CompressConfig", "groups 0", lambda d: CompressConfig(groups=0)),
    ("CompressConfig", "no group widths", lambda d: CompressConfig(group_bits=())),
    ("CompressConfig", "a group width 0", lambda d: CompressConfig(group_bits=(4, 0))),
    ("CompressConfig", "unknown criterion", lambda d: CompressConfig(criterion="size")),
    ("CompressConfig", "unknown allocation", lambda d: CompressConfig(allocation="log")),
    ("CompressConfig", "unknown scope", lambda d: CompressConfig(scope="row")),
    ("CompressConfig", "uniform with 4.5 bits", lambda d: CompressConfig(allocation="uniform", bits=4.5)),
    ("CompressConfig", "magnitude_share 2", lambda d: CompressConfig(magnitude_share=2.0)),
    ("CompressConfig", "include a string, not a list", lambda d: CompressConfig(include="fc*")),
    ("CompressConfig", "version 2", lambda d: CompressConfig(version=2)),
    ("CompressConfig.from_dict", "an unknown key", lambda d: CompressConfig.from_dict({"rate": 0.5, "speed": 1})),
    ("CompressConfig.from_dict", "a list, not an object", lambda d: CompressConfig.from_dict([0.5])),
    ("PipelineConfig", "epochs 1.5", lambda d: PipelineConfig(epochs=1.5)),
    ("PipelineConfig", "batch size 0", lambda d: PipelineConfig(batch_size=0)),
    ("PipelineConfig", "learning rate 0", lambda d: PipelineConfig(lr=0.0)),
    ("PipelineConfig", "0 rounds", lambda d: PipelineConfig(rounds=0)),
    ("PipelineConfig", "unknown Fisher estimator", lambda d: PipelineConfig(fisher="hessian")),
    ("PipelineConfig", "0 Fisher samples", lambda d: PipelineConfig(fisher_samples=0)),
    ("PipelineConfig", "compress settings None", lambda d: PipelineConfig(compress=None)),
    ("pipeline.run", "unknown model", lambda d: pipeline.run(PipelineConfig(model="lenet7"), X, Y, X, Y)),
    ("pipeline.load_training_checkpoint", "a PyTorch file not from `fisherpack train`", lambda d: pipeline.load_training_checkpoint(d / "tensor.pt")),
    ("fisher.from_adam", "an SGD optimizer", lambda d: fisher.from_adam(torch.optim.SGD(M.parameters(), lr=0.1), M)),
    ("fisher.from_adam", "Adam before its first step", lambda d: fisher.from_adam(torch.optim.Adam(M.parameters()), M)),
    ("fisher.empirical", "no data", lambda d: fisher.empirical(models.build("lenet300"), [])),
    ("fisher.empirical", "chunk 0", lambda d: fisher.empirical(models.build("lenet300"), [(X, Y)], chunk=0)),
    ("fisher.empirical", "a label 12 for 10 outputs", lambda d: fisher.empirical(models.build("lenet300"), [(X, Y12)])),
    ("train.train_epoch", "a label 12 for 10 outputs", lambda d: train.train_epoch(M2 := models.build("lenet300"), torch.optim.Adam(M2.parameters()), X, Y12, batch_size=4, seed=0, epoch=0)),
    ("train.evaluate", "float labels", lambda d: train.evaluate(models.build("lenet300"), X, Y.float())),
    ("fisherpack.compress", "an include pattern that matches nothing", lambda d: fisherpack.compress(models.build("lenet300"), None, CompressConfig(include=("fc*", "conv*"), allocation="uniform"))),
    ("fisher.from_adam_state", "an unnamed state, two parameters of one shape", lambda d: fisher.from_adam_state(_adam_state(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)))),
    ("fisher.empirical", "float64 data, float32 model", lambda d: fisher.empirical(models.build("lenet300"), [(X.double(), Y)])),
    ("fisher.empirical", "labels (n, 5) for (n, 10) logits", lambda d: fisher.empirical(models.build("lenet300"), [(X, Y[:, None].repeat(1, 5))])),
    ("prune.masks_for_rate", "rate 1.0", lambda d: prune.masks_for_rate({"w": torch.ones(4)}, 1.0)),
    ("prune.select", "unknown criterion", lambda d: prune.select("size", {"w": torch.ones(4)}, None, 0.5)),
    ("quant.quantize_group", "0 bits", lambda d: quant.quantize_group(torch.ones(4).double().numpy(), None, 0)),
    ("models.build", "unknown model", lambda d: models.build("lenet7")),
    ("data.load", "data folder does not exist", lambda d: data.load(d / "nope")),
    ("data.load", "a label outside 0..9", lambda d: data.load(d / "labels-12")),
    ("data.read_idx", "a text file", lambda d: data.read_idx(d / "text-idx" / data.FILES["train_images"])),
    ("data.batches", "batch size 0", lambda d: list(data.batches(X, Y, 0, shuffle=False))),
    ("data.batches", "8 inputs, 7 labels", lambda d: list(data.batches(X, Y[:7], 4, shuffle=False))),
    ("data.synthetic", "-1 training images", lambda d: data.synthetic(-1)),
    ("data.split_validation", "more held out than there is", lambda d: data.split_validation(X, Y, 8, seed=0)),
    ("format.load", "file does not exist", lambda d: format.load(d / "nope.fpk")),
    ("format.load", "a directory", lambda d: format.load(d / "out")),
    ("format.decode", "a text file", lambda d: format.decode(b"hello, world")),
    ("format.decode", "2**20 + 1 entries in a 138-byte file", lambda d: format.decode((d / "too-many.fpk").read_bytes())),
    ("format.save", "path is a directory", lambda d: format.save(Compressed({}), d / "out")),
    ("format.save", "folder not writable", lambda d: format.save(Compressed({}), "/sys/x.fpk")),
    ("format.encode", "a complex tensor", lambda d: format.encode(Compressed({"c": RawTensor(torch.ones(2, dtype=torch.complex64))}))),
    ("format.encode", "an alias to a missing tensor", lambda d: format.encode(Compressed({"a": Alias("b")}))),
    ("format.encode", "NaN in meta", lambda d: format.encode(Compressed({}, {"score": float("nan")}))),
    ("fisherpack.load", "file does not exist", lambda d: fisherpack.load(d / "nope.fpk")),
    ("fisherpack.load_into", "a file of another model", lambda d: fisherpack.load_into(models.build("lenet5"), d / "m.fpk")),
]  # fmt: skip
API += badinputs.API_MORE


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("errors")
    (d / "out").mkdir()
    badinputs.make(d)
    return d


def _cli(root: Path, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([a.replace("DIR", str(root)) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, err.getvalue().replace(str(root), "DIR")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(cli_rows: list[tuple], api_rows: list[tuple]) -> str:
    lines = [
        "# Errors: every bad input we try, and what it gets",
        "",
        "Generated by `tests/test_errors.py`, which runs every case below and fails if this file and the code",
        "disagree (`FISHERPACK_WRITE_ERRORS=1 pytest tests/test_errors.py` rewrites it). `DIR` stands for the",
        "test's folder. Every command exits non-zero, never with a traceback, and the error line shown is the",
        "last line on stderr (progress logs may come before it); exit 2 is for flags argparse rejects. Every",
        "Python call raises the FisherpackError subclass shown (ConfigError is also a ValueError). Hostile",
        "and damaged files are covered in bulk by the fuzz suite (`tests/test_fuzz.py`); here is one of each.",
        "",
        "## Command line",
        "",
        "| # | command | bad input | exit | stderr |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | `{c}` | {_cell(b)} | {code} | {_cell(e)} |" for i, (c, b, code, e) in enumerate(cli_rows, 1)]
    lines += ["", "## Python", "", "| # | call | bad input | raises |", "|---|---|---|---|"]
    lines += [f"| {i} | `{c}` | {_cell(b)} | {_cell(e)} |" for i, (c, b, e) in enumerate(api_rows, 1)]
    return "\n".join(lines) + "\n"


def _adam_state(model):
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_every_bad_input_gets_one_clear_line_and_the_table_is_current(root):
    cli_rows, api_rows = [], []
    for command, bad, argv in CLI:
        code, err = _cli(root, argv)
        errors = [line for line in err.splitlines() if line.startswith("fisherpack") and "error:" in line]
        assert code != 0 and "Traceback" not in err, (command, bad, code, err)
        assert len(errors) == 1 and err.splitlines()[-1] == errors[0], (command, bad, err)  # logs may come before
        assert errors[0].startswith(("fisherpack: error: ", f"fisherpack {command}: error: ")), err
        cli_rows.append((command, bad, code, errors[0]))
    for call, bad, fn in API:
        with pytest.raises(FisherpackError) as info:
            fn(root)
        message = str(info.value).replace(str(root), "DIR")
        assert message and "\n" not in message, (call, bad, message)
        api_rows.append((call, bad, f"{type(info.value).__name__}: {message}"))
    text = render(cli_rows, api_rows)
    if os.environ.get("FISHERPACK_WRITE_ERRORS"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/ERRORS.md is out of date: rerun with FISHERPACK_WRITE_ERRORS=1"
