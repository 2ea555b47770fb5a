"""Decoding speed of .fpk files: the LeNet-5 reference file and the 880 kB MLP file of inference.py.

For each file, ``read`` is read + check + decode to a :class:`fisherpack.Compressed` (every stream
decoded: masks, group ids, codes) and ``load`` also builds the dense float32 state dict
(``fisherpack.load``). Each is timed ``--repeats`` times in one process with one torch thread; the
minimum (the least disturbed run on a shared machine) and the median are recorded. The same file
re-encoded in format version 1 (the pure-Python rANS decoder of fisherpack 0.1's files) is timed
for comparison, and so is the default file read without fisherpack's C decoder (``read_no_c``: the
constriction and numpy decoders a build without a C compiler uses). Targets (issue 12): the
LeNet-5 reference file reads in under 1 ms, the MLP file in under 20 ms.

``--baseline REV`` also compares with the fisherpack of git revision ``REV`` (``git archive``d to a
temporary folder) in the same run: child processes time ``read`` and ``load`` with that code and
with this checkout's, alternating for ``--rounds`` rounds; the minimum over rounds is recorded under
``ab`` (the machine is shared, so the two are measured under the same conditions).

Writes ``decode.json`` and ``decode.png`` into ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
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
from fisherpack.fpk import entropy, gaps  # noqa: E402

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


@contextlib.contextmanager
def _without_c():
    """The C decoder switched off, as in a build without a C compiler."""
    saved = entropy._native, gaps._native
    entropy._native = gaps._native = None
    try:
        yield
    finally:
        entropy._native, gaps._native = saved


def measure(path: Path, repeats: int, workdir: Path) -> dict:
    v1 = workdir / f"{path.stem}.v1.fpk"
    v1.write_bytes(fpk.encode(fpk.load(path), version=1))
    out = {
        "file_bytes": path.stat().st_size,
        "file_bytes_v1": v1.stat().st_size,
        "read": _times(lambda: fpk.load(path), repeats),
        "load": _times(lambda: fisherpack.load(path).state_dict(), repeats),
        "read_v1": _times(lambda: fpk.load(v1), max(3, repeats // 10)),
    }
    if entropy._native is not None:
        with _without_c():
            out["read_no_c"] = _times(lambda: fpk.load(path), repeats)
    return out


# Run in a child process with the fisherpack to time first on sys.path: argv = [code folder, repeats, *name=path].
_CHILD = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import fisherpack
from fisherpack.fpk import container as fpk
assert fisherpack.__file__.startswith(sys.argv[1]), fisherpack.__file__
def times(fn, repeats):
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return {"min_ms": min(samples), "median_ms": statistics.median(samples)}
out = {}
for arg in sys.argv[3:]:
    name, path = arg.split("=", 1)
    n = int(sys.argv[2]) if name == "lenet5" else max(3, int(sys.argv[2]) // 10)
    out[name] = {"read": times(lambda: fpk.load(path), n), "load": times(lambda: fisherpack.load(path).state_dict(), n)}
print(json.dumps(out))
"""


def compare(rev: str, paths: dict[str, Path], repeats: int, rounds: int, workdir: Path) -> dict:
    """read/load times of ``rev``'s fisherpack and this checkout's, alternating in child processes."""
    base = workdir / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fisherpack"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True, check=True)
    args = [str(repeats), *(f"{n}={p}" for n, p in paths.items())]
    best: dict = {"baseline": {}, "current": {}}
    for _ in range(rounds):
        for which, code in (("baseline", base), ("current", ROOT)):
            done = subprocess.run([sys.executable, "-c", _CHILD, str(code), *args], capture_output=True, text=True,
                                  cwd=workdir, check=True)  # fmt: skip
            for name, r in json.loads(done.stdout).items():
                for key, t in r.items():
                    old = best[which].setdefault(name, {}).setdefault(key, t)
                    best[which][name][key] = {k: min(old[k], t[k]) for k in t}
    return {"baseline_rev": rev, "baseline_commit": commit.stdout.strip(), "rounds": rounds, **best}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["files"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = [
        ([results["files"][n][key]["min_ms"] for n in names], label)
        for key, label in [
            ("read_v1", "read, format v1"),
            ("read_no_c", "read, no C decoder"),
            ("read", "read"),
            ("load", "read + dense"),
        ]
        if all(key in results["files"][n] for n in names)
    ]
    if "ab" in results:
        rev = results["ab"]["baseline_commit"][:7]
        bars.insert(1, ([results["ab"]["baseline"][n]["read"]["min_ms"] for n in names], f"read, {rev}"))
    width = 0.8 / len(bars)
    for i, (values, label) in enumerate(bars):
        ax.bar([j + (i - (len(bars) - 1) / 2) * width for j in range(len(names))], values, width, label=label)
    for j, n in enumerate(names):
        ax.hlines(TARGET_MS[n], j - 0.4, j + 0.4, colors="k", linestyles="dashed")
    ax.set_xticks(range(len(names)), [f"{n}\n{results['files'][n]['file_bytes']:,} B" for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("ms (minimum over repeats); dashed: target")
    ax.set_title(f"Decoding .fpk files, decoder: {results['decoder']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--repeats", type=int, default=200, help="timed runs per measurement (MLP: a tenth)")
    p.add_argument("--quick", action="store_true", help="a small MLP and few repeats: a smoke test")
    p.add_argument("--baseline", help="a git revision to compare with, in the same run (see the docstring)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the --baseline comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 3 if args.quick else args.repeats
    env = environment.record(date=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    results = {"environment": env, "native_rans": entropy.native(), "decoder": entropy.native_decoder()}
    results |= {"targets_ms": TARGET_MS, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = files(Path(tmp), args.quick)
        for name, path in paths.items():
            results["files"][name] = measure(path, repeats if name == "lenet5" else max(3, repeats // 10), Path(tmp))
        if args.baseline:
            results["ab"] = compare(args.baseline, paths, repeats, args.rounds, Path(tmp))
    (out / "decode.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    plot(results, out / "decode.png")
    return results


if __name__ == "__main__":
    out = main()
    for name, r in out["files"].items():
        read, dense, old = (r[k]["min_ms"] for k in ("read", "load", "read_v1"))
        no_c = f", without the C decoder {r['read_no_c']['min_ms']:.2f} ms" if "read_no_c" in r else ""
        print(f"{name}: {r['file_bytes']:,} B, read {read:.2f} ms{no_c}, dense {dense:.2f} ms, v1 read {old:.2f} ms")
        if "ab" in out:
            a, b = out["ab"]["baseline"][name], out["ab"]["current"][name]
            print(
                f"  {out['ab']['baseline_rev']} -> this checkout: read {a['read']['min_ms']:.2f} -> "
                f"{b['read']['min_ms']:.2f} ms, dense {a['load']['min_ms']:.2f} -> {b['load']['min_ms']:.2f} ms"
            )
