"""Run by tests/test_dist.py under torchrun (or with torchrun's environment): one rank of a test.

Usage: python tests/dist_worker.py SCENARIO IN_DIR OUT_DIR. Every rank writes what it computed to
OUT_DIR/rank{r}.pt (torch.save of tensors and strings); the test compares the ranks with each other
and with the same computation done in one process by the helpers below, which both sides share.
"""

from __future__ import annotations

import hashlib
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn

from fisherpack import compress, data, dist, fisher, pipeline
from fisherpack.config import CompressConfig, PipelineConfig
from fisherpack.errors import ConfigError, DistributedError, FisherpackError, RanksDisagreeError
from fisherpack.fpk import container as format
from fisherpack.train import train_epoch

FISHER_N = 101  # odd: the two ranks' shards differ in size
TRAIN_N, BATCH = 147, 32  # the last global batch has 19 samples: shards of 10 and 9
COMPRESS = CompressConfig(rate=0.7, bits=3, groups=4)
PIPE = PipelineConfig(model="lenet300", epochs=1, rounds=1, finetune_epochs=0.5, batch_size=40, fisher_samples=50)


def tiny_model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.Tanh(), nn.Linear(24, 10)).to(dtype)


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _, _ = data.synthetic(TRAIN_N, 10, seed=1).tensors()
    return x, y


def masks_for(model: nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return {"1.weight": torch.rand(model[1].weight.shape, generator=gen) > 0.3}


def adam_run(model: nn.Module, net: nn.Module) -> torch.optim.Optimizer:
    """Two epochs of Adam, the second with masks: ``net`` is ``model`` or its DDP wrapper."""
    x, y = tensors()
    x = x.to(next(model.parameters()).dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_epoch(net, opt, x, y, batch_size=BATCH, seed=0, epoch=0)
    train_epoch(net, opt, x, y, batch_size=BATCH, seed=0, epoch=1, masks=masks_for(model))
    return opt


def _estimators(in_dir: Path, out_dir: Path) -> dict:
    x, y = tensors()
    xs, ys = dist.shard(x[:FISHER_N]), dist.shard(y[:FISHER_N])  # this rank's share of the samples
    res: dict = {"n_local": len(xs)}
    res["empirical64"] = fisher.empirical(tiny_model(torch.float64), [(xs.double(), ys)], chunk=16)
    res["sampled64"] = fisher.sampled(tiny_model(torch.float64), [(xs.double(), ys)], chunk=16, seed=4)

    trained = tiny_model(torch.float32)
    trained.load_state_dict(torch.load(in_dir / "trained.pt", weights_only=True))
    f32 = fisher.empirical(trained, [(xs, ys)], chunk=16)
    packed = compress(trained, f32, COMPRESS)
    _, res["save_digests"] = dist.save(packed, out_dir / "two.fpk")

    model = tiny_model(torch.float64)
    opt = adam_run(model, dist.wrap(model))
    res["adam_v"] = fisher.from_adam(opt, model)  # also checks that the ranks agree
    res["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}

    local = tiny_model(torch.float64)  # trained without DDP: each rank's Adam saw only its own shard
    opt = torch.optim.Adam(local.parameters())
    nn.functional.cross_entropy(local(xs.double()), ys).backward()
    opt.step()
    try:
        fisher.from_adam(opt, local)
    except RanksDisagreeError as exc:
        res["adam_error"] = str(exc)
    try:
        train_epoch(local, opt, x, y, batch_size=BATCH, seed=0, epoch=0)
    except ConfigError as exc:
        res["unwrapped_error"] = str(exc)

    if dist.rank() == 1:  # one rank's file differs: nobody may write
        packed.tensors["1.weight"].codes[0] ^= 1
    try:
        dist.save(packed, out_dir / "diverged.fpk")
    except RanksDisagreeError as exc:
        res["diverged_error"] = str(exc)
    try:
        dist.from_rank0(_fail, "a test action")
    except FisherpackError as exc:
        res["rank0_error"] = f"{exc.__class__.__name__}: {exc}"

    tensors_ = data.synthetic(200, 50, seed=0).tensors()
    for source in ("empirical", "sampled"):
        out = pipeline.run(PIPE.replace(fisher=source), *tensors_)
        res[f"pipeline_{source}"] = hashlib.sha256(format.encode(out.compressed)).hexdigest()
    ckpt = out_dir / "run.ckpt"  # train only, then resume the same run from rank 0's checkpoint
    pipeline.run(PIPE.replace(fisher="sampled"), *tensors_, checkpoint=ckpt, until="train")
    resumed = pipeline.run(PIPE.replace(fisher="sampled"), *tensors_, checkpoint=ckpt)
    res["pipeline_resumed"] = hashlib.sha256(format.encode(resumed.compressed)).hexdigest()
    return res


def _fail() -> None:
    raise FisherpackError("rank 0 cannot do it")


def _stuck(in_dir: Path, out_dir: Path) -> dict:
    """Rank 1 never joins the collective that rank 0 waits in: rank 0 must give up, not hang."""
    started = time.monotonic()
    if dist.rank() == 1:
        time.sleep(60)  # the test kills this rank long before
        return {}
    try:
        dist.agree(bytes(32), "a test digest")
    except DistributedError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - started}
    return {"error": "", "seconds": time.monotonic() - started}


def main() -> None:
    scenario, in_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", timeout=timedelta(seconds=float(sys.argv[4]) if len(sys.argv) > 4 else 60))
    try:
        res = {"estimators": _estimators, "stuck": _stuck}[scenario](in_dir, out_dir)
        torch.save(res, out_dir / f"rank{dist.rank()}.pt")
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
