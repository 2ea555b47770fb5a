"""Inference speed: dense fp32 against fisherpack's sparse runtime, and the time to decode the file.

Two networks, pruned and quantized by fisherpack and written to a .fpk file:

- ``lenet5``: LeNet-5 (431k parameters), the reference file ``benchmarks/results/lenet5.fpk`` made
  by ``fisherpack reproduce`` (trained on MNIST, pruned and quantized with the defaults). Without
  that file: random weights at Deep Compression's per-layer kept fractions (conv1 67%, conv2 5.3%,
  fc1 2.5%, fc2 6.1%; set with per-layer rate overrides), 5-bit codes.
- ``mlp4096``: a wide MLP 784-4096-4096-10 (20M parameters), every layer pruned to 95%, 5-bit codes.

The MLP's weights are random and pruned by magnitude: speed depends on the shapes and the number
of kept weights, not on what the network learned. For each network the file is decoded
into a fresh model ("dense": plain PyTorch, fp32, zeros included) and converted by
``fisherpack.runtime.optimize`` for batch sizes 1 and 256 ("runtime"). Each timing sample runs
enough forward passes of one model to last about 20 ms (the same for both, so that both lose the
same share of a sample to other processes on a shared machine); dense and runtime samples are
interleaved and the medians compared, so both see the same machine load. Besides wall time, the
CPU time of the calling thread (``time.thread_time``; with one torch thread all the work runs
there) is recorded: it does not count time the process waits for a core. Decoding (read, check, decode to a dense
state dict; also for the file written without the rANS stage), loading and conversion (which
includes the runtime's own measurements) are timed once each.

:func:`run` writes ``inference.json`` (figures and an environment record) and ``inference.png``;
``python benchmarks/inference.py`` runs it into benchmarks/results and ``python
benchmarks/report.py`` then updates the table in the README from the JSON.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import models, runtime, structured
from ..compression import compress
from ..config import CompressConfig
from ..fpk.container import load, save
from ..fpk.fileio import atomic_write_bytes
from ..loading import load_into, summary
from . import environment

BATCHES = (1, 256)
SAMPLE_MS = 20.0  # each timing sample repeats forward passes for at least about this long
LENET5_RATES = {"conv1.weight": 0.33, "conv2.weight": 0.947, "fc1.weight": 0.975, "fc2.weight": 0.939}


def wide_mlp(width: int = 4096) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def networks(quick: bool, reference: Path | None) -> dict[str, tuple]:
    """name -> (factory, CompressConfig or an existing .fpk). ``quick`` shrinks the MLP for a smoke
    test; ``reference`` is a LeNet-5 file to measure (random weights at Deep Compression's rates
    when it is None or missing); a file made with structured pruning is measured against the
    full-size dense LeNet-5."""
    lenet = CompressConfig(
        criterion="magnitude",
        allocation="uniform",
        bits=5,
        overrides=tuple((n, {"rate": r}) for n, r in LENET5_RATES.items()),
    )
    mlp = CompressConfig(rate=0.95, criterion="magnitude", scope="layer", allocation="uniform", bits=5)
    width = 256 if quick else 4096
    lenet_source = reference if reference is not None and reference.is_file() else lenet
    return {"lenet5": (lambda: models.build("lenet5"), lenet_source), f"mlp{width}": (lambda: wide_mlp(width), mlp)}


def _sample(fn, x: torch.Tensor, inner: int) -> tuple[float, float]:
    """(wall ms, CPU ms of this thread) per call, over ``inner`` calls."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(inner):
        fn(x)
    return 1e3 * (time.perf_counter() - wall) / inner, 1e3 * (time.thread_time() - cpu) / inner


def compare(
    dense: nn.Module, fast: nn.Module, x: torch.Tensor, repeats: int, same_as: nn.Module | None = None
) -> dict[str, float]:
    """Median ms per forward pass of both models, samples interleaved, each about SAMPLE_MS long.
    ``fast`` must compute what ``same_as`` (default ``dense``) computes."""
    models = {"dense": dense, "runtime": fast}
    with torch.no_grad():
        # warm-up (first calls at a new shape allocate and pick kernels) and the duration of a call
        one = {k: min(_sample(m, x, 1)[0] for _ in range(3)) for k, m in models.items()}
        inner = {k: max(1, int(SAMPLE_MS / max(t, 1e-3))) for k, t in one.items()}
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
        for _ in range(repeats):
            for k, m in models.items():
                samples[k].append(_sample(m, x, inner[k]))
        torch.testing.assert_close(fast(x), (same_as or dense)(x), rtol=1e-4, atol=1e-4)
    wall = {k: statistics.median(w for w, _ in v) for k, v in samples.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in samples.items()}
    return {
        "dense_ms": wall["dense"],
        "runtime_ms": wall["runtime"],
        "speedup": wall["dense"] / wall["runtime"],
        "dense_cpu_ms": cpu["dense"],
        "runtime_cpu_ms": cpu["runtime"],
        "cpu_speedup": cpu["dense"] / cpu["runtime"],
        "inner": inner,
    }


def run_network(
    name: str, factory, source, repeats: int, workdir: Path, batches: tuple[int, ...], label: str = ""
) -> dict:
    if isinstance(source, Path):
        path, packed = source, load(source)
        file_bytes = path.stat().st_size
    else:
        torch.manual_seed(0)
        packed = compress(factory(), None, source, meta={"model": name})
        path = workdir / f"{name}.fpk"
        file_bytes = save(packed, path)

    start = time.perf_counter()
    state = load(path).state_dict()  # read, check, decode to a dense state dict
    decode_s = time.perf_counter() - start
    dense = factory().eval()
    full_size = sum(p.numel() for p in dense.parameters())
    shrunk = bool(structured.fit(dense, state))  # structured pruning: the file's layers are smaller
    start = time.perf_counter()
    dense.load_state_dict(state)
    load_s = time.perf_counter() - start
    plain = workdir / f"{name}.plain.fpk"  # the same without the entropy stage: bigger, faster to decode
    plain_bytes = save(packed, plain, entropy=False)
    start = time.perf_counter()
    load(plain).state_dict()
    decode_plain_s = time.perf_counter() - start
    fast = factory()
    load_into(fast, path)
    start = time.perf_counter()
    report = runtime.optimize(fast, *(torch.randn(b, 1, 28, 28) for b in batches))
    optimize_s = time.perf_counter() - start

    result = {
        "source": (label or source.name) if isinstance(source, Path) else "random weights",
        "params": full_size,
        "loaded_params": sum(p.numel() for p in dense.parameters()),  # fewer after structured pruning
        "kept_fraction": summary(packed, file_bytes)["nonzero_params"] / full_size,
        "file_bytes": file_bytes,
        "fp32_bytes": 4 * full_size,
        "decode_s": decode_s,
        "file_bytes_plain": plain_bytes,
        "decode_plain_s": decode_plain_s,
        "load_s": load_s,
        "optimize_s": optimize_s,
        "layers": {n: {k: r[k] for k in ("density", "sparse", "kernels")} for n, r in report.items()},
        "batches": {},
    }
    for b in batches:
        x = torch.randn(b, 1, 28, 28, generator=torch.Generator().manual_seed(b))
        # after structured pruning the baseline is the full-size dense model the user had
        baseline = factory().eval() if shrunk else dense
        result["batches"][str(b)] = compare(baseline, fast, x, repeats, same_as=dense)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, dense, fast = [], [], []
    for name, r in results["networks"].items():
        for b, m in r["batches"].items():
            labels.append(f"{name}\nbatch {b}")
            dense.append(m["dense_ms"])
            fast.append(m["runtime_ms"])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, dense, 0.4, label="dense fp32 (PyTorch)")
    ax.bar(x + 0.2, fast, 0.4, label="fisherpack runtime")
    for i, (d, f) in enumerate(zip(dense, fast)):
        ax.text(i + 0.2, f, f"{d / f:.1f}x", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per forward pass (median)")
    env = results["environment"]
    ax.set_title(f"Inference, {env['threads']} thread(s), torch {env['torch']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    out: Path,
    reference: Path | None = None,
    reference_label: str = "",
    threads: int = 1,
    repeats: int = 21,
    batches: tuple[int, ...] = BATCHES,
    quick: bool = False,
) -> dict:
    """Measure every network, write ``inference.json`` and ``inference.png`` into ``out``, return
    the results. ``quick``: a small MLP and 3 repeats, a smoke test."""
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 3 if quick else repeats
    env = environment.record(date=time.strftime("%Y-%m-%d %H:%M:%S %z"), mkl=torch.backends.mkl.is_available())
    results = {"environment": env, "repeats": repeats, "networks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (factory, config) in networks(quick, reference).items():
            label = reference_label if config == reference else ""
            results["networks"][name] = run_network(name, factory, config, repeats, Path(tmp), batches, label)
    atomic_write_bytes(out / "inference.json", (json.dumps(results, indent=2, sort_keys=True) + "\n").encode())
    plot(results, out / "inference.png")
    return results
