"""Peer tools and fisherpack on one trained LeNet-5, measured in the same run on real MNIST.

The model: LeNet-5 trained with fisherpack's pipeline (PipelineConfig defaults: Adam lr 1e-3, batch 64,
cosine schedule, no augmentation; seeded) on the MNIST training set minus
a held-out validation split, or a `fisherpack train` checkpoint (``--checkpoint``). Every tool
starts from that same model; every fine-tune is one epoch of masked training on the same split,
in the same data order, continuing the training run's Adam state at lr 1e-3 (fisherpack's
fine-tuning rate). Reported: test error and the bytes of what each tool saves, against the bytes
of the dense ``torch.save(model.state_dict())``.

- torch.nn.utils.prune, global L1 unstructured over conv and fc weights: the checkpoint with masks
  attached (``weight_orig`` + ``weight_mask``), and after ``prune.remove`` the weights as sparse
  COO tensors in ``torch.save`` + gzip -9.
- torchao (the ``peers`` extra): weight-only quantization of the Linear layers (``quantize_``'s
  default filter; conv stays fp32), ``torch.save(state_dict)``, reloaded with weights_only=True.
- fisherpack at the same budget: the same one-shot global pruning (magnitude, and OBD with Adam's
  Fisher) + one epoch of masked fine-tuning, then 5 bits on average (waterfill), as a .fpk file;
  and quantization only (4 bits on average) against torchao. Errors are of the decoded file.

If a peer cannot be imported or run, the reason is recorded in the JSON instead of failing.

    PYTHONPATH=. python benchmarks/peers.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fisherpack
from fisherpack import data, fisher, models, pipeline
from fisherpack.bench import environment
from fisherpack.compression import compress, compressible
from fisherpack.config import CompressConfig, PipelineConfig
from fisherpack.fpk import container as format
from fisherpack.fpk.fileio import atomic_write_bytes
from fisherpack.loading import load_into
from fisherpack.prune import apply_masks, select
from fisherpack.train import evaluate, train_epoch

RATES = (0.9, 0.95, 0.98)

RESULTS = Path(__file__).resolve().parent / "results"


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(blob: bytes) -> Any:
    return torch.load(io.BytesIO(blob), weights_only=True)


class Bench:
    """The trained model and the data every tool is measured with."""

    def __init__(self, model, optimizer, batch_size, x_fit, y_fit, x_test, y_test, seed, finetune_epoch):
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.x_fit, self.y_fit, self.x_test, self.y_test = x_fit, y_fit, x_test, y_test
        self.seed, self.finetune_epoch = seed, finetune_epoch
        self.dense_bytes = len(_saved(model.state_dict()))

    def copy(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A copy of the model and of its Adam state (deep: the original's moments stay untouched)."""
        model = copy.deepcopy(self.model)
        optimizer = torch.optim.Adam(model.parameters())
        optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        for group in optimizer.param_groups:
            group["lr"] = 1e-3
        return model, optimizer

    def finetune(self, model, optimizer, masks=None) -> None:
        train_epoch(
            model,
            optimizer,
            self.x_fit,
            self.y_fit,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.finetune_epoch,
            masks=masks,
        )

    def error(self, model) -> float:
        return evaluate(model, self.x_test, self.y_test)[0]

    def row(self, tool, version, setting, error, nbytes, saved, **extra) -> dict[str, Any]:
        return {
            "tool": tool,
            "version": version,
            "setting": setting,
            "test_error": error,
            "saved_bytes": nbytes,
            "ratio": self.dense_bytes / nbytes,
            "what_is_saved": saved,
            **extra,
        }


def torch_prune(b: Bench, rate: float) -> list[dict[str, Any]]:
    from torch.nn.utils import prune

    model, optimizer = b.copy()
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=rate)
    b.finetune(model, optimizer)
    error = b.error(model)
    with_masks = _saved(model.state_dict())
    for module, name in layers:
        prune.remove(module, name)
    nonzero = sum(int(module.weight.count_nonzero()) for module, _ in layers)
    state = {k: v.to_sparse() if k in compressible(model) else v for k, v in model.state_dict().items()}
    gz = gzip.compress(_saved(state), compresslevel=9, mtime=0)
    restored = models.build("lenet5")
    restored.load_state_dict({k: v.to_dense() for k, v in _load(gzip.decompress(gz)).items()})
    version = torch.__version__
    setting = f"global L1 {rate:.0%} + 1 epoch"
    return [
        b.row(
            "torch.nn.utils.prune",
            version,
            setting,
            error,
            len(with_masks),
            "state_dict, masks attached",
            nonzero_weights=nonzero,
        ),
        b.row(
            "torch.nn.utils.prune",
            version,
            setting + ", prune.remove",
            b.error(restored),
            len(gz),
            "state_dict, weights as sparse COO, gzip -9",
            nonzero_weights=nonzero,
        ),
    ]


def torchao_rows(b: Bench) -> list[dict[str, Any]]:
    try:
        import torchao
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup
    except Exception as exc:  # not installed, or broken next to this torch
        return [{"tool": "torchao", "status": "unavailable", "reason": f"{exc.__class__.__name__}: {exc}"}]
    configs = {
        "Int8WeightOnly (Linear; conv stays fp32)": Int8WeightOnlyConfig(),
        "Intx int4 per-channel (Linear; conv stays fp32)": IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerAxis(0)
        ),
        "Intx int4 group 50 (Linear; conv stays fp32)": IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(50)
        ),
    }
    rows = []
    for setting, config in configs.items():
        try:
            model = copy.deepcopy(b.model)
            quantize_(model, config)
            error = b.error(model)
            blob = _saved(model.state_dict())
            reloaded = copy.deepcopy(b.model)
            quantize_(reloaded, config)
            reloaded.load_state_dict(_load(blob), assign=True)
            extra = {"reload_error": b.error(reloaded), "dtype_of_fc1": type(model.fc1.weight).__name__}
            rows.append(b.row("torchao", torchao.__version__, setting, error, len(blob), "state_dict", **extra))
        except Exception as exc:
            reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            rows.append({"tool": "torchao", "setting": setting, "status": "failed", "reason": reason})
    return rows


def _fpk_row(b: Bench, model, optimizer, masks, config: CompressConfig, setting: str, **extra) -> dict[str, Any]:
    packed = compress(model, fisher.from_adam(optimizer, model), config, masks=masks, meta={"model": "lenet5"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.fpk"
        size = format.save(packed, path, entropy=config.entropy)
        decoded = load_into(models.build("lenet5"), format.load(path))
    nonzero = sum(int(packed.tensors[n].mask.sum()) for n in compressible(model))
    extra = {"nonzero_weights": nonzero, **extra}
    return b.row("fisherpack", fisherpack.__version__, setting, b.error(decoded), size, ".fpk file", **extra)


def fisherpack_rows(b: Bench, rate: float, criterion: str) -> dict[str, Any]:
    model, optimizer = b.copy()
    params = dict(model.named_parameters())
    names = compressible(model)
    fish = fisher.from_adam(optimizer, model) if criterion != "magnitude" else None
    masks = select(criterion, {n: params[n].detach() for n in names}, fish, rate, scope="global")
    apply_masks(model, masks)
    b.finetune(model, optimizer, masks)
    setting = f"global {criterion} {rate:.0%} + 1 epoch, 5 bits avg"
    before = b.error(model)
    return _fpk_row(
        b, model, optimizer, masks, CompressConfig(bits=5.0), setting, test_error_before_quantization=before
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    env = environment.record(
        seed=args.seed, torchao=environment.package_version("torchao")
    )  # before any output is written
    x_train, y_train, x_test, y_test = data.load(args.data_dir).tensors()
    x_fit, y_fit, x_val, y_val = data.split_validation(x_train, y_train, args.val, args.seed)
    if args.checkpoint:
        ckpt = pipeline.load_training_checkpoint(args.checkpoint)
        model, optimizer = pipeline.restore_checkpoint(ckpt)
        batch_size = pipeline.training_batch_size(ckpt)
        source, epochs = {"checkpoint": args.checkpoint, "held_out_validation": False}, None
    else:
        cfg = PipelineConfig(model="lenet5", seed=args.seed, epochs=args.epochs)  # plain Adam, no augmentation
        print(f"training LeNet-5 for {args.epochs} epochs on {len(x_fit):,} images", file=sys.stderr)
        outcome = pipeline.run(cfg, x_fit, y_fit, x_val, y_val, until="train")
        model, optimizer, batch_size, epochs = outcome.model, outcome.optimizer, cfg.batch_size, args.epochs
        source = {"trained_here": True, "epochs": epochs, "held_out_validation": True, "config": cfg.to_dict()}
    b = Bench(model, optimizer, batch_size, x_fit, y_fit, x_test, y_test, args.seed, finetune_epoch=1000)
    dense = {
        "params": sum(p.numel() for p in model.parameters()),
        "test_error": b.error(model),
        "validation_error": evaluate(model, x_val, y_val)[0],
        "state_dict_bytes": b.dense_bytes,
    }
    rows: list[dict[str, Any]] = []
    for rate in args.rates:
        print(f"torch.nn.utils.prune at {rate:.0%}", file=sys.stderr)
        rows += torch_prune(b, rate)
        for criterion in args.criteria:
            print(f"fisherpack {criterion} at {rate:.0%}", file=sys.stderr)
            rows.append(fisherpack_rows(b, rate, criterion))
    print("torchao", file=sys.stderr)
    rows += torchao_rows(b)
    qmodel, qopt = b.copy()
    rows.append(_fpk_row(b, qmodel, qopt, None, CompressConfig(bits=4.0), "quantize only, 4 bits avg (conv too)"))
    return {
        "model": "lenet5",
        "source": source,
        "dense": dense,
        "finetune": "1 epoch, masked, Adam continued at lr 1e-3, same data order for every tool",
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "environment": env,
    }


def table(result: dict[str, Any]) -> str:
    d = result["dense"]
    lines = [
        f"LeNet-5, {d['params']:,} params, dense test error {d['test_error']:.2%}, "
        f"fp32 state_dict {d['state_dict_bytes']:,} B",
        "",
        "| tool | setting | test error | saved bytes | ratio | what is saved |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "status" in r:
            lines.append(f"| {r['tool']} | {r.get('setting', '')} | {r['status']}: {r['reason']} | | | |")
            continue
        tool = f"{r['tool']} {r['version']}"
        lines.append(
            f"| {tool} | {r['setting']} | {r['test_error']:.2%} | {r['saved_bytes']:,} | {r['ratio']:.1f}x "
            f"| {r['what_is_saved']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a `fisherpack train` checkpoint of lenet5 instead of training here")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=5000, help="training images held out from training")
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    p.add_argument("--criteria", nargs="+", default=["magnitude", "obd"], help="fisherpack pruning criteria")
    p.add_argument("--data-dir", help="MNIST-format idx files (default: fetch MNIST into the cache)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    text = table(result)
    atomic_write_bytes(args.out_dir / "peers.json", (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(args.out_dir / "peers.md", (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
