"""Inference speed: dense fp32 against fisherpack's sparse runtime, and the time to decode the file
(fisherpack/bench/inference.py says what is measured and how).

python benchmarks/inference.py && python benchmarks/report.py
"""

import argparse
from pathlib import Path

from fisherpack.bench import inference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "benchmarks/results/lenet5.fpk"  # made with structured pruning: timed against the full-size LeNet-5


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--repeats", type=int, default=21, help="interleaved timing samples per measurement")
    p.add_argument("--batches", default=",".join(map(str, inference.BATCHES)), help="batch sizes, comma-separated")
    p.add_argument("--quick", action="store_true", help="a small MLP and few repeats: a smoke test")
    args = p.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    return inference.run(Path(args.out), ROOT / REFERENCE, REFERENCE, args.threads, args.repeats, batches,
                         quick=args.quick)  # fmt: skip


if __name__ == "__main__":
    for name, r in main()["networks"].items():
        speed = ", ".join(f"batch {b}: {m['speedup']:.2f}x" for b, m in r["batches"].items())
        print(f"{name}: file {r['file_bytes']:,} B, decode {r['decode_s']:.3f} s, {speed}")
