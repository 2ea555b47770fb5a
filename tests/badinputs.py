"""Bad inputs on disk for tests/test_errors.py: broken data folders, checkpoints and .fpk files.

``make(root)`` writes them all under ``root`` (the docs show it as ``DIR``) and returns nothing:
every case in test_errors.py names the file it uses. Building them takes no training: a training
checkpoint is an untrained LeNet-300-100 after one Adam step on random data.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import fuzzcases as fz
import fuzzcost as fc
import fuzzgen as fg
import numpy as np
import torch

from fisherpack import checkpoint, data, models
from fisherpack.compression import compress
from fisherpack.config import CompressConfig
from fisherpack.fpk import container as format
from fisherpack.fpk.tensors import Compressed, RawTensor


def training_checkpoint(name: str = "lenet300", *, step: bool = True) -> dict:
    """What ``fisherpack train`` writes, for an untrained model (after one Adam step if ``step``)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.build(name)
        opt = torch.optim.Adam(model.parameters())
        if step:
            torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.arange(4)).backward()
            opt.step()
    return {"fisherpack_checkpoint": 1, "model": name, "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(), "config": "{}"}  # fmt: skip


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _data_folders(root: Path) -> None:
    good = data.synthetic(200, 50, seed=0)
    data.write_dataset(root / "data", good)
    broken = ("no-test-labels", "truncated-idx", "labels-12", "images-32px", "count-mismatch", "text-idx", "float-idx")
    folders = {name: data.write_dataset(root / name, good) for name in broken}
    (folders["no-test-labels"] / data.FILES["test_labels"]).unlink()
    images = folders["truncated-idx"] / data.FILES["train_images"]
    images.write_bytes(images.read_bytes()[:-100])
    labels = good.train_labels.copy()
    labels[7] = 12
    data.write_idx(folders["labels-12"] / data.FILES["train_labels"], labels)
    data.write_idx(folders["labels-12"] / data.FILES["test_labels"], labels[:50])  # eval reads only these
    data.write_idx(folders["images-32px"] / data.FILES["train_images"], np.zeros((200, 32, 32), np.uint8))
    data.write_idx(folders["count-mismatch"] / data.FILES["train_labels"], good.train_labels[:199])
    (folders["text-idx"] / data.FILES["train_images"]).write_text("these are not images\n")
    (folders["float-idx"] / data.FILES["train_images"]).write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4))
    (root / "afile").write_text("a file where a folder should be\n")
    _more_data_folders(root, good)


def _more_data_folders(root: Path, good) -> None:
    """Issue 16's broken data folders."""
    import gzip

    broken = ("idx-65-dims", "no-training-images", "empty-test", "gz-two-members", "gz-trailing-garbage")
    folders = {name: data.write_dataset(root / name, good) for name in broken}
    dims = bytes([0, 0, 8, 65]) + struct.pack(">65I", *[1] * 65) + b"\x00"
    (folders["idx-65-dims"] / data.FILES["train_images"]).write_bytes(dims)
    data.write_idx(folders["no-training-images"] / data.FILES["train_images"], np.zeros((0, 28, 28), np.uint8))
    data.write_idx(folders["no-training-images"] / data.FILES["train_labels"], np.zeros(0, np.uint8))
    data.write_idx(folders["empty-test"] / data.FILES["test_images"], np.zeros((0, 28, 28), np.uint8))
    data.write_idx(folders["empty-test"] / data.FILES["test_labels"], np.zeros(0, np.uint8))
    for name, tail in (("gz-two-members", gzip.compress(b"more")), ("gz-trailing-garbage", b"garbage")):
        plain = folders[name] / data.FILES["train_labels"]
        (folders[name] / (data.FILES["train_labels"] + ".gz")).write_bytes(gzip.compress(plain.read_bytes()) + tail)
        plain.unlink()


def _checkpoints(root: Path) -> None:
    good = training_checkpoint()
    (root / "m.pt").write_bytes(_torch_bytes(good))
    (root / "no-adam.pt").write_bytes(_torch_bytes(training_checkpoint(step=False)))
    nan = training_checkpoint()
    nan["state_dict"]["fc1.weight"][0, 0] = float("nan")
    (root / "nan.pt").write_bytes(_torch_bytes(nan))
    (root / "other-model.pt").write_bytes(_torch_bytes({**good, "model": "lenet5"}))
    (root / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    (root / "tensor.pt").write_bytes(_torch_bytes(torch.ones(3)))
    (root / "run.fpk.ckpt").write_bytes(b"not a checkpoint")
    checkpoint.save_state(root / "other.fpk.ckpt", {"config": "{}", "index": 1})
    checkpoint.save_state(root / "flipped.fpk.ckpt", {"config": "{}", "fisher": torch.ones(1000)})
    blob = bytearray((root / "flipped.fpk.ckpt").read_bytes())
    blob[len(blob) // 2] ^= 4  # inside the tensor's bytes
    (root / "flipped.fpk.ckpt").write_bytes(bytes(blob))


def _fpk_files(root: Path) -> None:
    with torch.random.fork_rng():  # the same bytes whatever ran before: messages quote sizes
        torch.manual_seed(0)
        model = models.build("lenet300")
        fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    good = format.encode(compress(model, fisher, CompressConfig(rate=0.9), meta={"model": "lenet300"}))
    (root / "m.fpk").write_bytes(good)
    # Damaged copies of a file that no setting of compress changes (messages quote its sizes).
    fixed = format.encode(Compressed({"b": RawTensor(torch.arange(100.0))}, {"model": "lenet300"}))
    (root / "truncated.fpk").write_bytes(fixed[: len(fixed) // 2])
    (root / "corrupt.fpk").write_bytes(fixed[:100] + bytes([fixed[100] ^ 1]) + fixed[101:])
    (root / "empty.fpk").write_bytes(b"")
    (root / "text.fpk").write_text("hello, this is a text file and not a model at all\n")
    (root / "zip.fpk").write_bytes(_torch_bytes({"w": torch.ones(3)}))
    newer = bytearray(fixed)
    newer[8] = 5
    (root / "v5.fpk").write_bytes(bytes(newer))
    header = fz.header_of(fixed)
    header["meta"]["score"] = "NAN_HERE"
    text = json.dumps(header).encode().replace(b'"NAN_HERE"', b"NaN")
    (root / "nan-meta.fpk").write_bytes(fz.frame_json(text, fz.parts(fixed)[1], fz.version_of(fixed)))
    (root / "too-many.fpk").write_bytes(fg.bombs()["quant: one entry over the default"])
    (root / "unknown-model.fpk").write_bytes(fz.mixed_file())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lenet5 = compress(models.build("lenet5"), None, CompressConfig(criterion="magnitude", allocation="uniform"))
    lenet5.meta["model"] = "lenet300"
    (root / "wrong-tensors.fpk").write_bytes(format.encode(lenet5))
    body = struct.pack("<8sHIQ", format.MAGIC, 1, 0, 0)
    (root / "no-header.fpk").write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def _hostile_fpk_files(root: Path) -> None:
    """Valid files (correct CRC) with odd header values, for issue 16's cases below."""
    fixed = format.encode(Compressed({"b": RawTensor(torch.arange(4.0))}, {"model": "lenet300"}))
    text, payload, version = json.dumps(fz.header_of(fixed)), fz.parts(fixed)[1], fz.version_of(fixed)
    edits = {"model-list": ('"model": "lenet300"', '"model": ["lenet300"]'),
             "model-object": ('"model": "lenet300"', '"model": {"a": 1}'),
             "surrogate-model": ('"model": "lenet300"', '"model": "\\ud800"'),
             "surrogate-name": ('"name": "b"', '"name": "\\ud800"')}  # fmt: skip
    for name, (old, new) in edits.items():
        assert old in text
        (root / f"{name}.fpk").write_bytes(fz.frame_json(text.replace(old, new).encode(), payload, version))
    (root / "aliases.fpk").write_bytes(fc.files()["aliases: 2**20 entries under 100 names"])
    short = {"kind": "raw", "name": "b", "dtype": "float32", "shape": [4], "data": {"encoding": "plain", "length": 8}}
    (root / "short-stream.fpk").write_bytes(fz.frame_json({"meta": {}, "tensors": [short]}, bytes(8)))
    (root / "target.fpk").write_bytes(b"keep")
    (root / "link.fpk").symlink_to(root / "target.fpk")
    (root / "readonly.fpk").write_bytes(b"keep")
    (root / "readonly.fpk").chmod(0o444)
    os.mkfifo(root / "fifo")


# Issue 16's cases, appended to test_errors.py's tables (same columns).
R = ["reproduce", "--model", "lenet300", "--epochs", "1", "--rounds", "1", "--quiet", "--out", "DIR/out/x.fpk"]
C = ["compress", "DIR/m.pt", "--out", "DIR/out/c.fpk"]
CLI_MORE = [
    ("eval", "meta.model is a list (valid CRC)", ["eval", "DIR/model-list.fpk"]),
    ("eval", "meta.model is an object, --json", ["eval", "DIR/model-object.fpk", "--json"]),
    ("export", "meta.model is a list, --onnx", ["export", "DIR/model-list.fpk", "--onnx", "DIR/out/m.onnx"]),
    ("inspect", "a lone surrogate \\ud800 as tensor name", ["inspect", "DIR/surrogate-name.fpk"]),
    ("inspect", "a lone surrogate \\ud800 as model name", ["inspect", "DIR/surrogate-model.fpk"]),
    ("export", "a lone surrogate as tensor name", ["export", "DIR/surrogate-name.fpk", "--safetensors", "DIR/o.st"]),
]
CLI_MORE += [
    ("export", "one 2**20-entry tensor under 100 names", ["export", "DIR/aliases.fpk", "--safetensors", "DIR/o.st"]),
]
E, NO_TRAIN = ["eval", "DIR/m.fpk", "--data-dir"], "DIR/no-training-images"
CLI_MORE += [
    ("reproduce", "an idx header declaring 65 dimensions", [*R, "--data-dir", "DIR/idx-65-dims"]),
    ("reproduce", "zero training images", [*R, "--data-dir", "DIR/no-training-images"]),
    ("compress", "empirical Fisher, no training images", [*C, "--fisher", "empirical", "--data-dir", NO_TRAIN]),
    ("reproduce", "a gzip idx file with a second member", [*R, "--data-dir", "DIR/gz-two-members"]),
    ("reproduce", "a gzip idx file with trailing garbage", [*R, "--data-dir", "DIR/gz-trailing-garbage"]),
    ("eval", "zero test images", [*E, "DIR/empty-test"]),
]
CLI_MORE += [("reproduce", "OUT.ckpt with one bit flipped", [*R, "--data-dir", "DIR/data", "--out", "DIR/flipped.fpk"])]
CLI_MORE += [
    ("inspect", "a stream shorter than its tensor (valid CRC)", ["inspect", "DIR/short-stream.fpk"]),
    ("compress", "--out is the input checkpoint", [*C[:2], "--out", "DIR/m.pt"]),
    ("compress", "--out is a symlink", [*C[:2], "--out", "DIR/link.fpk"]),
    ("compress", "--out is a read-only file", [*C[:2], "--out", "DIR/readonly.fpk"]),
    ("compress", "--out is a FIFO", [*C[:2], "--out", "DIR/fifo"]),
    ("compress", "--out is empty", [*C[:2], "--out", ""]),
    ("export", "--safetensors is the input file", ["export", "DIR/m.fpk", "--safetensors", "DIR/m.fpk"]),
]
X = ["export", "DIR/m.fpk", "--onnx", "DIR/out/m.onnx"]
CLI_MORE += [
    ("reproduce", "--threads 2**31", ["--threads", str(2**31), *R]),
    ("reproduce", "--timeout nan", ["--timeout", "nan", *R]),
    ("reproduce", "--seed 2**64", [*R, "--seed", str(2**64)]),
    ("reproduce", "--seed of 401 digits", [*R, "--seed", "1" + "0" * 400]),
    ("reproduce", "--finetune-epochs inf", [*R, "--finetune-epochs", "inf"]),
    ("reproduce", "--rounds 10**8", [*R, "--rounds", str(10**8)]),
    ("train", "--epochs 10**8", ["train", "--model", "lenet300", "--epochs", str(10**8), "--out", "DIR/out/m.pt"]),
    ("eval", "--max-elements 2**40", ["eval", "DIR/m.fpk", "--max-elements", str(2**40)]),
    ("compress", "--fisher-samples -5", [*C, "--fisher", "empirical", "--fisher-samples", "-5"]),
    ("export", "a negative --input-shape", [*X, "--input-shape=-1,1,28,28"]),
    ("export", "a huge --input-shape", [*X, "--input-shape", "100000,100000,28,28"]),
]
API_MORE: list = []


def make(root: Path) -> None:
    _data_folders(root)
    _checkpoints(root)
    _fpk_files(root)
    _hostile_fpk_files(root)
