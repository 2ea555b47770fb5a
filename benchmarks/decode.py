"""Decoding speed of .fpk files: the LeNet-5 reference file and the 880 kB MLP file of inference.py.

For each file, ``read`` is read + check + decode to a :class:`fisherpack.Compressed` (every stream
decoded: masks, group ids, codes) and ``load`` also builds the dense float32 state dict
(``fisherpack.load``). Each is timed ``--repeats`` times in one process with one torch thread; the
minimum (the least disturbed run on a shared machine) and the median are recorded. The same file
re-encoded in format version 1 (the pure-Python rANS decoder of fisherpack 0.1's files) is timed
for comparison. Targets (issue 12): the LeNet-5 reference file reads in under 1 ms, the MLP file
in under 20 ms.

Writes ``decode.json`` and ``decode.png`` into ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fisherpack  # noqa: E402
from fisherpack.bench import environment  # noqa: E402
from fisherpack.fpk import container as fpk  # noqa: E402
from fisherpack.fpk import entropy  # noqa: E402

TARGET_MS = {"lenet5": 1.0, "mlp4096": 20.0}


def _times(fn, repeats: int) -> dict:
    fn()  # warm up: imports, caches
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return {"min_ms": min(samples), "median_ms": statistics.median(samples)}


def files(workdir: Path, quick: bool) -> dict[str, Path]:
    """name -> .fpk path: the committed LeNet-5 reference file and inference.py's MLP file."""
    from fisherpack.bench.inference import networks

    out = {"lenet5": ROOT / "benchmarks" / "results" / "lenet5.fpk"}
    name, (factory, config) = next((n, v) for n, v in networks(quick, None).items() if n.startswith("mlp"))
    torch.manual_seed(0)
    path = workdir / f"{name}.fpk"
    fisherpack.save(fisherpack.compress(factory(), None, config), path)
    out["mlp4096"] = path  # keyed by the full-size name so that --quick results are comparable in shape
    return out


def measure(path: Path, repeats: int, workdir: Path) -> dict:
    v1 = workdir / f"{path.stem}.v1.fpk"
    v1.write_bytes(fpk.encode(fpk.load(path), version=1))
    return {
        "file_bytes": path.stat().st_size,
        "file_bytes_v1": v1.stat().st_size,
        "read": _times(lambda: fpk.load(path), repeats),
        "load": _times(lambda: fisherpack.load(path).state_dict(), repeats),
        "read_v1": _times(lambda: fpk.load(v1), max(3, repeats // 10)),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["files"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.27
    for i, (key, label) in enumerate([("read_v1", "read, format v1"), ("read", "read"), ("load", "read + dense")]):
        values = [results["files"][n][key]["min_ms"] for n in names]
        ax.bar([j + (i - 1) * width for j in range(len(names))], values, width, label=label)
    for j, n in enumerate(names):
        ax.hlines(TARGET_MS[n], j - 1.5 * width, j + 1.5 * width, colors="k", linestyles="dashed")
    ax.set_xticks(range(len(names)), [f"{n}\n{results['files'][n]['file_bytes']:,} B" for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("ms (minimum over repeats); dashed: target")
    ax.set_title(f"Decoding .fpk files, native rANS: {results['native_rans']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--repeats", type=int, default=200, help="timed runs per measurement (MLP: a tenth)")
    p.add_argument("--quick", action="store_true", help="a small MLP and few repeats: a smoke test")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 3 if args.quick else args.repeats
    env = environment.record(date=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    results = {"environment": env, "native_rans": entropy.native(), "targets_ms": TARGET_MS, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files(Path(tmp), args.quick).items():
            results["files"][name] = measure(path, repeats if name == "lenet5" else max(3, repeats // 10), Path(tmp))
    (out / "decode.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    plot(results, out / "decode.png")
    return results


if __name__ == "__main__":
    for name, r in main()["files"].items():
        read, dense, old = (r[k]["min_ms"] for k in ("read", "load", "read_v1"))
        print(f"{name}: {r['file_bytes']:,} B, read {read:.2f} ms, dense {dense:.2f} ms, format v1 read {old:.2f} ms")
