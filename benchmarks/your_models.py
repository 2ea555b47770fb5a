"""The whole pipeline on three models that are not LeNets, on real data, with an error budget.

- ``bytelm``: a byte-level transformer LM (tied embedding, nn.MultiheadAttention, LayerNorm) on the
  Python standard library's own source, split by file (examples/bytelm.py); metric bits per byte;
  target: a file >= 10x smaller than the fp32 state dict at <= +0.05 bits per byte on test.
- ``dwcnn``: a 219k-parameter residual CNN with BatchNorm and depthwise/grouped convolutions on
  MNIST (examples/dwcnn.py); target >= 50x at <= +0.3 pp test error.
- ``rowgru``: a GRU reading MNIST images row by row (examples/rowgru.py); target >= 30x at
  <= +0.5 pp test error.

For each: train once (Adam), then ``budget.pipeline_search``: climb a ladder of rates (each rung
prunes the rung below further with the Fisher re-estimated and fine-tunes), stop at the first rung
far over the *validation* budget before quantization, then finish rungs from the top (final and
quantization-aware fine-tuning), bisecting the widths, until two have a point within budget.
Every point is a file reloaded and measured. The smallest file within budget is then measured once
on *test*.
Baselines at that point's rate and width, from the same trained model: one-shot ``compress``
(OBD + waterfill widths, Adam's Fisher, no fine-tuning) and magnitude pruning + uniform widths.

Writes ``your_models.json`` (figures, every point tried, environment record), ``your_models.png``
(bytes against validation metric of every point, baselines marked) and ``your_models.md`` (the
table the README shows between its ``your_models`` markers) into ``--out``.
``--tiny`` runs tiny models on a sliver of the data (what the tests run); ``--only`` picks models.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples import bytelm, dwcnn, rowgru  # noqa: E402
from fisherpack import CompressConfig, PipelineConfig, losses, pipeline  # noqa: E402
from fisherpack import fisher as fisher_mod  # noqa: E402
from fisherpack.bench import environment, readme  # noqa: E402
from fisherpack.budget import Budget, pipeline_search, reload_and_measure  # noqa: E402
from fisherpack.compression import compress  # noqa: E402
from fisherpack.fpk.fileio import atomic_write_bytes  # noqa: E402
from fisherpack.train import measure  # noqa: E402

_C = CompressConfig(criterion="obd", quantize_biases=True)
MODELS = {
    "bytelm": {
        "module": bytelm, "metric": "bits_per_token", "unit": "bits/byte", "budget": "0.05", "ratio": 10,
        "cfg": PipelineConfig(model="examples.bytelm:build", epochs=4, batch_size=32, lr=2e-3, rounds=3,
                              finetune_epochs=0.5, final_epochs=1, qat_epochs=1, qat_lr=1e-4, compress=_C),
        "rates": (0.5, 0.7, 0.8, 0.85, 0.9, 0.93), "widths": (5.0, 4.0, 3.0),
    },
    "dwcnn": {
        "module": dwcnn, "metric": "error", "unit": "error", "budget": "0.003", "ratio": 50,
        "cfg": PipelineConfig(model="examples.dwcnn:build", epochs=2, batch_size=64, rounds=4, finetune_epochs=0.25,
                              final_epochs=0, qat_epochs=1, compress=_C),
        # depthwise convolutions are slow on a CPU: a narrower grid and one rung finished keep it in 15 minutes
        "rates": (0.8, 0.9, 0.95, 0.97), "widths": (3.0, 2.0), "finish": 1,
    },
    "rowgru": {
        "module": rowgru, "metric": "error", "unit": "error", "budget": "0.005", "ratio": 30,
        "cfg": PipelineConfig(model="examples.rowgru:build", epochs=6, batch_size=64, lr=2e-3, rounds=4,
                              finetune_epochs=0.5, final_epochs=1, qat_epochs=2, compress=_C),
        "rates": (0.5, 0.7, 0.8, 0.85, 0.875, 0.9, 0.93, 0.95), "widths": (4.0, 3.5, 3.0, 2.0),
    },
}  # fmt: skip
TINY = {"epochs": 1, "rounds": 1, "final_epochs": 0, "qat_epochs": 1}


def run_model(name: str, tiny: bool, log) -> dict:
    spec = MODELS[name]
    module, metric = spec["module"], losses.METRICS[spec["metric"]]
    cfg = spec["cfg"].replace(**TINY) if tiny else spec["cfg"]
    build_fn = module.tiny if tiny else module.build
    data = (module.tiny_splits() if hasattr(module, "tiny_splits") else module.splits()) if tiny else module.splits()
    if tiny:  # a sliver of MNIST
        data = {k: (x[:300], y[:300]) for k, (x, y) in data.items()}

    def build() -> torch.nn.Module:
        torch.manual_seed(cfg.seed)
        return build_fn()

    started, cpu = time.perf_counter(), time.process_time()
    trained = pipeline.run(cfg, *data["train"], *data["val"], model=build(), metric=metric, until="train")
    start = {"model": trained.model.state_dict(), "optimizer": trained.optimizer.state_dict(), "figures": {}}
    dense_test = measure(trained.model, *data["test"], metric)
    fp32 = 4 * sum(t.numel() for t in trained.model.state_dict().values() if t.is_floating_point())
    budget = Budget.parse(spec["budget"])
    best, tried, dense_val, packed = pipeline_search(
        cfg, build, data["train"], data["val"], budget, metric=metric, start=start,
        rates=spec["rates"][:2] if tiny else spec["rates"], widths=spec["widths"][:1] if tiny else spec["widths"],
        finish=spec.get("finish", 2),
        on_point=lambda p: log(f"{name}: rate {p.rate} bits {p.bits:g}: {p.file_bytes:,} bytes, val {p.value:.4f}"),
    )  # fmt: skip
    out = {"params": sum(p.numel() for p in trained.model.parameters()), "fp32_bytes": fp32, "unit": spec["unit"],
           "budget": spec["budget"], "target_ratio": spec["ratio"], "dense_val": dense_val, "dense_test": dense_test,
           "points": [vars(p) for p in tried], "config": cfg.to_dict()}  # fmt: skip
    if best is None:
        return {**out, "best": None, "seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(time.process_time() - cpu, 1)}  # fmt: skip
    size, test = reload_and_measure(packed, trained.model, *data["test"], metric=metric)
    out.update(best=vars(best), file_bytes=size, ratio=fp32 / size, test=test, test_delta=test - dense_test)
    point = cfg.compress.replace(rate=best.rate, bits=best.bits)
    optimizer = torch.optim.Adam(trained.model.parameters())
    optimizer.load_state_dict(start["optimizer"])
    baselines = {
        "one-shot compress": compress(trained.model, fisher_mod.from_adam(optimizer, trained.model), point),
        "magnitude + uniform": compress(  # uniform widths are whole bits: the baseline gets the next one up
            trained.model, None, point.replace(criterion="magnitude", allocation="uniform", bits=math.ceil(point.bits))
        ),
    }
    out["baselines"] = {}
    for label, c in baselines.items():
        b, v = reload_and_measure(c, trained.model, *data["val"], metric=metric)
        out["baselines"][label] = {"file_bytes": b, "val": v, "test": reload_and_measure(c, trained.model,
                                   *data["test"], metric=metric)[1]}  # fmt: skip
    # wall time depends on what else the shared machine runs; CPU time (one thread) does not
    out["seconds"], out["cpu_seconds"] = round(time.perf_counter() - started, 1), round(time.process_time() - cpu, 1)
    out["threads"] = torch.get_num_threads()  # CPU seconds add up every thread's
    return out


def table(results: dict) -> str:
    rows = ["| model | params | fp32 bytes | file bytes | ratio (target) | dense test | file test (target) "
            "| one-shot test | magnitude+uniform test | minutes (CPU) |", "|" + "---|" * 10]  # fmt: skip
    for name, r in results.items():
        if r.get("best") is None:
            rows.append(f"| {name} | {r['params']:,} | {r['fp32_bytes']:,} | no point within budget | | | | | | |")
            continue
        f = (lambda v: f"{v:.2%}") if r["unit"] == "error" else (lambda v: f"{v:.3f}")
        limit = float(r["budget"])
        b = r["baselines"]
        rows.append(
            f"| {name} | {r['params']:,} | {r['fp32_bytes']:,} | {r['file_bytes']:,} | {r['ratio']:.1f}x "
            f"(>= {r['target_ratio']}x) | {f(r['dense_test'])} | {f(r['test'])} (<= +{f(limit)}) "
            f"| {f(b['one-shot compress']['test'])} | {f(b['magnitude + uniform']['test'])} | {_minutes(r)} |"
        )
    return "\n".join(rows) + "\n"


def _minutes(r: dict) -> str:
    """Wall minutes, and CPU minutes where the record has them (older records do not)."""
    wall = f"{r['seconds'] / 60:.1f}"
    return f"{wall} ({r['cpu_seconds'] / 60:.1f})" if "cpu_seconds" in r else wall


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        pts = r["points"]
        ax.scatter([p["file_bytes"] for p in pts], [p["value"] for p in pts], c=["C0" if p["within"] else "C3"
                   for p in pts], label="pipeline points (red: over budget)")  # fmt: skip
        for i, (label, b) in enumerate(r.get("baselines", {}).items()):
            ax.scatter([b["file_bytes"]], [b["val"]], marker="x", color=f"C{i + 1}", label=label)
        ceiling = Budget.parse(r["budget"]).ceiling(r["dense_val"])
        ax.axhline(ceiling, color="grey", ls="--", label="budget")
        ax.set_xscale("log")
        ax.set(title=name, xlabel="file bytes", ylabel=f"validation {r['unit']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--only", nargs="*", choices=sorted(MODELS), help="models to run (default all)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data (for tests)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the record says how many)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "your_models.json"
    results = json.loads(path.read_text())["models"] if path.exists() and not args.tiny else {}
    for name in args.only or sorted(MODELS):
        results[name] = run_model(name, args.tiny, lambda m: print(m, file=sys.stderr, flush=True))
        record = {"models": results, "environment": environment.record(seed=0)}
        atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        plot(results, out / "your_models.png")  # after every model: a long run that stops keeps what it did
        atomic_write_bytes(out / "your_models.md", table(results).encode())
    if not args.tiny:
        path = ROOT / "README.md"
        readme.rewrite(path, readme.replace_section(path.read_text(), "your_models", table(results)), check=False)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
