"""Per-layer sensitivity on real MNIST: Fisher-predicted vs measured loss increase.

For each model: train it with fisherpack's own pipeline (PipelineConfig defaults: Adam lr 1e-3, batch
64, cosine schedule, no augmentation; seeded) on the MNIST training set
minus a held-out validation split, estimate the empirical Fisher (1,000 training samples) and the
Adam-state Fisher (rescaled by the batch size), then prune or quantize one layer at a time and
compare the second-order prediction with the measured increase of the validation loss (see
fisherpack/bench/sensitivity.py). The test set is only evaluated once for context, never for a choice.

Writes benchmarks/results/sensitivity_MODEL.json (with an environment record) and .png, where the
Adam Fisher ranks OBD and chooses quantization steps (as in fisherpack's pipeline), and
sensitivity_MODEL_rank_empirical.json/.png from the same trained model with the empirical Fisher
in that role.

    PYTHONPATH=. python benchmarks/sensitivity.py --threads 1            # both models
    PYTHONPATH=. python benchmarks/sensitivity.py --models lenet5 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import torch

from fisherpack import data, pipeline
from fisherpack.bench import environment, sensitivity
from fisherpack.config import PipelineConfig
from fisherpack.fpk.fileio import atomic_write_bytes
from fisherpack.train import evaluate

EPOCHS = {"lenet5": 3, "lenet300": 5}

RESULTS = Path(__file__).resolve().parent / "results"


def run(name: str, epochs: int, seed: int, n_val: int, cfg: sensitivity.SensitivityConfig, out_dir: Path, env) -> list:
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = data.load().tensors()
    x_fit, y_fit, x_val, y_val = data.split_validation(x_train, y_train, n_val, seed)
    pcfg = PipelineConfig(model=name, seed=seed, epochs=epochs)  # plain Adam, cosine lr, no augmentation
    print(f"{name}: training {epochs} epochs on {len(x_fit):,} images", file=sys.stderr)
    outcome = pipeline.run(pcfg, x_fit, y_fit, x_val, y_val, until="train")
    trained = time.perf_counter()
    model, optimizer = outcome.model, outcome.optimizer
    fishers = sensitivity.estimate(model, x_fit, y_fit, cfg, optimizer=optimizer, batch_size=pcfg.batch_size)
    estimated = time.perf_counter()
    common = {
        "model": name,
        "training": {"epochs": epochs, "images": len(x_fit), "pipeline_config": pcfg.to_dict()},
        "validation": {"images": len(x_val), "seed": seed, "held_out_from_training": True},
        "validation_error": evaluate(model, x_val, y_val)[0],
        "test_error_for_context": evaluate(model, x_test, y_test)[0],
        "environment": env,
    }
    results = []
    for rank_by in ("adam", "empirical"):
        begun = time.perf_counter()
        report = sensitivity.analyse(model, fishers, x_val, y_val, dataclasses.replace(cfg, rank_by=rank_by))
        result = {
            **common,
            "config": {**cfg.__dict__, "rank_by": rank_by, "adam_batch_size": pcfg.batch_size},
            "seconds": {
                "training": round(trained - started, 1),
                "fisher": round(estimated - trained, 1),
                "measuring": round(time.perf_counter() - begun, 1),
            },
            **report.to_dict(),
        }
        stem = out_dir / (f"sensitivity_{name}" + ("" if rank_by == "adam" else f"_rank_{rank_by}"))
        atomic_write_bytes(stem.with_suffix(".json"), (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
        buf = io.BytesIO()
        title = f"{name} ({epochs} epochs, val error {result['validation_error']:.2%}), OBD ranked by {rank_by} Fisher"
        sensitivity.figure(report, title=title).savefig(buf, format="png", dpi=120)
        atomic_write_bytes(stem.with_suffix(".png"), buf.getvalue())
        print(f"wrote {stem}.json and .png", file=sys.stderr)
        results.append(result)
    return results


def _summary(result: dict) -> str:
    lines = [
        f"{result['model']}: base val loss {result['base_loss']:.4f}, val error {result['validation_error']:.2%}, "
        f"OBD ranked and steps chosen by the {result['rank_by']} Fisher"
    ]
    lines.append(f"{'layer':<14} {'setting':<15} {'pred emp':>10} {'pred adam':>10} {'measured':>10}")
    for r in result["rows"]:
        p = r["predicted"]
        lines.append(
            f"{r['layer']:<14} {r['setting']:<15} {p['empirical']:>10.3e} {p['adam']:>10.3e} {r['measured']:>10.3e}"
        )
    for s, rho in result["spearman"].items():
        lines.append(f"Spearman {s:<9} all {rho['all']:.3f}  prune {rho['prune']:.3f}  quantize {rho['quantize']:.3f}")
    for s, med in result["median_measured_over_predicted"].items():
        lines.append(f"median measured/predicted {s:<9} prune {med['prune']:.3g}  quantize {med['quantize']:.3g}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "lenet300"])
    p.add_argument("--epochs", type=int, help="training epochs (default: lenet5 3, lenet300 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=5000, help="training images held out to measure on")
    p.add_argument("--fisher-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cfg = sensitivity.SensitivityConfig(fisher_samples=args.fisher_samples, seed=args.seed)
    env = environment.record(
        seed=args.seed, matplotlib=environment.package_version("matplotlib")
    )  # before any output is written
    for name in args.models:
        for result in run(name, args.epochs or EPOCHS.get(name, 3), args.seed, args.val, cfg, args.out_dir, env):
            print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
