"""Bad inputs on disk for tests/test_errors.py: broken data folders, checkpoints and .fpk files.

``make(root)`` writes them all under ``root`` (the docs show it as ``DIR``) and returns nothing:
every case in test_errors.py names the file it uses. Building them takes no training: a training
checkpoint is an untrained LeNet-300-100 after one Adam step on random data.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import fuzzcases as fz
import fuzzgen as fg
import numpy as np
import torch

from fisherpack import data, format, models
from fisherpack.compress import compress
from fisherpack.config import CompressConfig
from fisherpack.tensors import Compressed, RawTensor


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
    data.write_idx(folders["images-32px"] / data.FILES["train_images"], np.zeros((200, 32, 32), np.uint8))
    data.write_idx(folders["count-mismatch"] / data.FILES["train_labels"], good.train_labels[:199])
    (folders["text-idx"] / data.FILES["train_images"]).write_text("these are not images\n")
    (folders["float-idx"] / data.FILES["train_images"]).write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4))
    (root / "afile").write_text("a file where a folder should be\n")


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
    (root / "other.fpk.ckpt").write_bytes(_torch_bytes({"config": "{}", "index": 1}))


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
    newer[8] = 3
    (root / "v3.fpk").write_bytes(bytes(newer))
    header = fz.header_of(fixed)
    header["meta"]["score"] = "NAN_HERE"
    text = json.dumps(header).encode().replace(b'"NAN_HERE"', b"NaN")
    (root / "nan-meta.fpk").write_bytes(fz.frame_json(text, fz.parts(fixed)[1]))
    (root / "too-many.fpk").write_bytes(fg.bombs()["quant: one entry over the default"])
    (root / "unknown-model.fpk").write_bytes(fz.mixed_file())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lenet5 = compress(models.build("lenet5"), None, CompressConfig(criterion="magnitude", allocation="uniform"))
    lenet5.meta["model"] = "lenet300"
    (root / "wrong-tensors.fpk").write_bytes(format.encode(lenet5))
    body = struct.pack("<8sHIQ", format.MAGIC, 1, 0, 0)
    (root / "no-header.fpk").write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def make(root: Path) -> None:
    _data_folders(root)
    _checkpoints(root)
    _fpk_files(root)
