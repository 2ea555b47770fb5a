"""Long fuzz runs and memory measurements of the .fpk decoder; writes JSON with an environment record.

    python benchmarks/fuzz.py --seconds 600            # random families with fresh seeds until time is up
    python benchmarks/fuzz.py --atheris --seconds 600  # coverage-guided, if atheris is installed
    python benchmarks/fuzz.py --memory                 # peak RSS and CPU time of every bomb and cost attack,
                                                       # each in a fresh process

The cases, the checker and the bombs are those of the test suite (tests/fuzzcases.py); the CI runs a
fixed slice of them, this script runs as many as it is given time for and reports how many. A failing
case is written to benchmarks/results/fuzz-failure-*.fpk and the run stops with exit code 1.
Atheris mutates the header as JSON text plus the payload (``HEADER \\n--payload--\\n PAYLOAD``), and
every input is re-framed with a valid CRC, so the mutations reach the validator and the decoders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
if "--atheris" in sys.argv:  # coverage instrumentation of fisherpack only: it must happen at import
    import atheris

    with atheris.instrument_imports(include=["fisherpack"]):
        import fisherpack.fpk.container  # noqa: F401

import fuzzcases as fz  # noqa: E402
import fuzzcost as fc  # noqa: E402
import fuzzgen as fg  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import fisherpack  # noqa: E402
from fisherpack.bench import environment  # noqa: E402
from fisherpack.bench.environment import proc_status_kib  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEPARATOR = b"\n--payload--\n"
FILES = {"lenet5": True, "lenet5 plain": False, "mixed": True, "mixed plain": False}


def _file(name: str) -> bytes:
    return (fz.lenet5_file if name.startswith("lenet5") else fz.mixed_file)(FILES[name])


def _families(name: str, rng: np.random.Generator, n: int):
    data = _file(name)
    yield "payload edits", fg.payload_edits(data, rng, n)
    yield "stream swaps", fg.stream_swaps(data, rng, n)
    yield "header edits", fg.header_edits(data, rng, 2 * n)
    yield "header text edits", fg.header_text_edits(data, rng, n)
    yield "bit flips", fg.bit_flips(data, rng, n)


def _save_failure(data: bytes) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"fuzz-failure-{zlib.crc32(data):08x}.fpk"
    path.write_bytes(data)
    return path


def random_run(seconds: float, seed: int) -> dict:
    """Round after round of every family on every sample file, a new seed each round."""
    deadline, rounds = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        for name in FILES:
            rng = np.random.default_rng([seed, rounds, *name.encode()])
            n = 20 if name.startswith("lenet5") else 200
            for family, cases in _families(name, rng, n):
                cases = list(cases)
                try:
                    fz.run(f"{name}: {family}", cases)
                except AssertionError as exc:
                    print(f"FAILED: {exc}", file=sys.stderr)
                    for data in cases:  # find and keep the failing case
                        try:
                            fz.run("replay", [data])
                        except AssertionError:
                            print(f"saved {_save_failure(data)}", file=sys.stderr)
                            break
                    raise SystemExit(1) from None
        rounds += 1
    return {"mode": "random", "seconds": seconds, "seed": seed, "rounds": rounds}


def _to_input(data: bytes) -> bytes:
    zheader, payload = fz.parts(data)
    return zlib.decompress(zheader) + SEPARATOR + payload


def atheris_run(seconds: float, seed: int, finish) -> None:
    """Coverage-guided: libFuzzer mutates ``HEADER SEPARATOR PAYLOAD`` inputs seeded by the sample
    files. libFuzzer ends the process itself, so the run finishes from inside the callback."""
    import os

    corpus = Path(tempfile.mkdtemp(prefix="fisherpack-corpus-"))  # libFuzzer adds what it finds
    for name in FILES:
        (corpus / name.replace(" ", "-")).write_bytes(_to_input(_file(name)))
    deadline = time.monotonic() + seconds

    def one_input(raw: bytes) -> None:
        text, _, payload = raw.partition(SEPARATOR)
        data = fz.frame_json(text, payload)
        try:
            fz.run("atheris", [data])
        except AssertionError:
            print(f"saved {_save_failure(data)}", file=sys.stderr)
            raise
        if time.monotonic() > deadline:
            finish({"mode": "atheris", "seconds": seconds, "seed": seed})
            os._exit(0)

    atheris.Setup([sys.argv[0], f"-seed={seed}", "-rss_limit_mb=4096", "-max_len=65536", str(corpus)], one_input)
    atheris.Fuzz()


def _one_bomb(path: str) -> dict:
    """Run in a fresh process that holds nothing but the file: peak RSS growth and CPU time of what
    every reader does with it (describe, decode, the state dict, the safetensors export)."""
    data = Path(path).read_bytes()
    # Peak RSS is a high-water mark that imports have already raised: reset it to the current RSS
    # (Linux >= 4.0), so the growth below is the decoder's alone.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    before = proc_status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, wall = time.process_time(), time.perf_counter()
    try:
        fc.every_reader(data)
        outcome = "decoded"
    except fisherpack.FormatError as exc:
        outcome = f"FormatError: {exc}"
    seconds, wall = time.process_time() - start, time.perf_counter() - wall
    grown = ((proc_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - before) / 1024
    return {"file_bytes": len(data), "peak_rss_growth_mib": round(grown, 1), "cpu_seconds": round(seconds, 3),
            "wall_seconds": round(wall, 3), "outcome": outcome}  # fmt: skip


def memory_run() -> dict:
    rows, folder = [], Path(tempfile.mkdtemp(prefix="fisherpack-bombs-"))
    cases = {**fg.bombs(), **{f"cost: {k}": v for k, v in fc.files().items()}}
    count, cases[""] = fc.tiny_rans_streams()
    cases[f"cost: {count} tiny rANS streams"] = cases.pop("")
    for i, (name, data) in enumerate(cases.items()):
        path = folder / f"{i}.fpk"
        path.write_bytes(data)
        argv = [sys.executable, __file__, "--one-bomb", str(path)]
        rows.append(
            {"bomb": name, **json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)}
        )
        _, traced, _ = fz.measure(data)
        r = rows[-1]
        r["tracemalloc_peak_mib"] = round(traced, 1)
        print(f"{name[:56]:<56} {r['file_bytes']:>9} B  RSS +{r['peak_rss_growth_mib']:7.1f} MiB  "
              f"traced {traced:7.1f} MiB  {r['cpu_seconds']:6.2f} s CPU  {r['outcome'][:40]}")  # fmt: skip
        path.unlink()
    slowest = max(rows, key=lambda r: r["cpu_seconds"])
    print(f"slowest case: {slowest['bomb']}, {slowest['cpu_seconds']:.3f} s of CPU time")
    return {
        "mode": "memory",
        "bombs": rows,
        "slowest": {"case": slowest["bomb"], "cpu_seconds": slowest["cpu_seconds"]},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--atheris", action="store_true", help="coverage-guided fuzzing with atheris (pip install atheris)")
    p.add_argument("--memory", action="store_true", help="peak RSS of every bomb, one fresh process each")
    p.add_argument("--one-bomb", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="JSON results (default: benchmarks/results/fuzz-MODE.json)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.one_bomb:
        print(json.dumps(_one_bomb(args.one_bomb)))
        return 0
    started = time.perf_counter()

    def finish(result: dict) -> None:
        result.update(
            cases=dict(fz.COUNTS),
            total_cases=sum(fz.COUNTS.values()),
            outcomes=dict(fz.OUTCOMES),
            slowest_ms={k: round(v * 1000, 1) for k, v in fz.SLOWEST.items()},
            wall_seconds=round(time.perf_counter() - started, 1),
            environment=environment.record(),
        )
        print(fz.report())
        out = args.out or RESULTS / f"fuzz-{result['mode']}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}", flush=True)

    if args.atheris:
        atheris_run(args.seconds, args.seed, finish)
    finish(memory_run() if args.memory else random_run(args.seconds, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
