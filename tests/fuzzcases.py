"""The fuzz suite's sample files, framing helpers, bounded checker and case counts.

Used by tests/test_fuzz.py (a bounded slice in every CI run) and benchmarks/fuzz.py (long runs).
A case passes when ``decode`` raises FormatError with a one-line message, or when the file decodes,
describes and re-encodes, with every decoded tensor of exactly the shape the header declares.
Anything else fails: another exception, a multi-line message, a case of at most 1 MB that takes
more than ``LIMIT`` seconds of CPU time (the better of two runs when the first is over; a SIGALRM
timer turns a hang into a failure) or whose peak
resident memory grows by more than ``MEMORY_MIB`` (from /proc/self/status, the peak reset per case).

The hostile files themselves come from fuzzgen.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import signal
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from fisherpack import models
from fisherpack.bench.environment import proc_status_kib
from fisherpack.compression import compress
from fisherpack.config import CompressConfig
from fisherpack.errors import FormatError
from fisherpack.fpk import container as fpk
from fisherpack.fpk.header import deflate_header, inflate_header
from fisherpack.fpk.tensors import Alias, Compressed, QuantTensor, RawTensor

PRE = struct.Struct("<8sHIQ")
# Issue 16: no file up to 1 MB may cost more than LIMIT seconds or MEMORY_MIB to decode or refuse.
# Time is the process's CPU time (time.process_time), so that other jobs on a shared machine do not
# count; the SIGALRM timer only turns a hang into a failure after HANG seconds of wall time.
LIMIT, HANG, MAX_FILE = 1.0, 10.0, 1 << 20
MEMORY_MIB = 512  # peak resident growth per case, read from /proc (no check where there is none)
COUNTS: Counter = Counter()  # family -> cases checked, reported at the end of the pytest session
OUTCOMES: Counter = Counter()  # "error" / "decoded"
SLOWEST: dict[str, float] = {}  # family -> slowest case, seconds
SLOWEST_CASE: tuple[str, float] = ("none", 0.0)  # the family and time of the slowest case of all


# ---------------------------------------------------------------- sample files


@functools.cache
def lenet5_file(entropy: bool = True, version: int = fpk.VERSION) -> bytes:
    """A real LeNet-5 (431,080 parameters, random weights and Fisher) pruned to 2%, 4 groups."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.build("lenet5")
        fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    packed = compress(model, fisher, CompressConfig(rate=0.98, bits=5, groups=4), meta={"model": "lenet5"})
    return fpk.encode(packed, entropy=entropy, version=version)


def _quant(rng, shape, density, bits, exps, grids, skew=False) -> QuantTensor:
    numel = int(np.prod(shape))
    mask = rng.random(numel) < density
    kept = int(mask.sum())
    groups = rng.integers(0, len(bits), kept).astype(np.uint8)
    top = np.asarray([1 << b for b in bits])[groups]
    codes = np.minimum(rng.geometric(0.5, kept) - 1, top - 1) if skew else rng.integers(0, top)
    return QuantTensor(shape, mask, groups, codes.astype(np.uint16), bits, exps, grids)


@functools.cache
def mixed_file(entropy: bool = True, version: int = fpk.VERSION) -> bytes:
    """A small file that uses every encoding (with ``entropy``) and every raw dtype."""
    rng = np.random.default_rng(1)
    tensors = {
        "dense": _quant(rng, (8, 25), 1.0, (3,), (-2,), ("int",), skew=True),
        "half": _quant(rng, (16, 16), 0.5, (2, 5), (0, -4), ("odd", "int")),
        "sparse": _quant(rng, (100, 200), 0.01, (4, 13, 1), (-6, 3, 64), ("int", "odd", "odd"), skew=True),
        "tied": Alias("sparse"),
        "bias": RawTensor(torch.linspace(-1, 1, 10)),
        "zeros": RawTensor(torch.zeros(64)),
        "flags": RawTensor(torch.arange(7) % 2 == 0),
        "half_precision": RawTensor(torch.linspace(0, 1, 5, dtype=torch.bfloat16)),
        "steps": RawTensor(torch.tensor(12345, dtype=torch.int64)),
        "empty": RawTensor(torch.zeros(0, 3, dtype=torch.int8)),
    }
    meta = {"model": "mixed", "list": [1, 2.5, None, True, "x"]}
    return fpk.encode(Compressed(tensors, meta), entropy=entropy, version=version)


# ---------------------------------------------------------------- framing


def parts(data: bytes) -> tuple[bytes, bytes]:
    """(compressed header, payload) of a well-formed file."""
    _, _, hlen, plen = PRE.unpack_from(data)
    return data[PRE.size : PRE.size + hlen], data[PRE.size + hlen : PRE.size + hlen + plen]


def header_of(data: bytes) -> dict:
    return json.loads(inflate_header(parts(data)[0], PRE.unpack_from(data)[1]))


# Hand-built headers list every key (version 3): version 4 only leaves out keys that follow from the
# rest, and checks the rest by the same rules (the version-4 cases are in test_format.py).
FULL = 3


def frame(zheader: bytes, payload: bytes, version: int = FULL) -> bytes:
    """A file with a correct preamble and CRC around a compressed header and a payload."""
    body = PRE.pack(fpk.MAGIC, version, len(zheader), len(payload)) + zheader + payload
    return body + struct.pack("<I", zlib.crc32(body))


def frame_json(header: dict | bytes, payload: bytes, version: int = FULL) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return frame(deflate_header(text, version), payload, version)


def version_of(data: bytes) -> int:
    return PRE.unpack_from(data)[1]


# ---------------------------------------------------------------- the checker


class CaseTimeout(BaseException):
    """Raised by the timer: a BaseException, so that no ``except Exception`` can swallow it."""


def _alarm(signum, frame) -> None:
    raise CaseTimeout


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Install the SIGALRM handler that :func:`check` arms for each case."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(exc: FormatError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg, f"FormatError message is not one line: {msg!r}"


def check(data: bytes, limit: float = HANG) -> str:
    """'error' or 'decoded' (see the module docstring); AssertionError or the stray exception otherwise."""
    # The timer repeats every 0.1 s after the limit: an alarm that lands where Python ignores
    # exceptions (a gc callback, a __del__) is followed by another one.
    signal.setitimer(signal.ITIMER_REAL, limit, 0.1)
    try:
        try:
            c = fpk.decode(data)
        except FormatError as exc:
            _one_line(exc)
            with contextlib.suppress(FormatError):  # describe checks less, so it may succeed
                fpk.describe(data)
            return "error"
        for t in c.tensors.values():  # the decoder skips QuantTensor's checks: they must hold anyway
            if isinstance(t, QuantTensor):
                dataclasses.replace(t)  # runs __post_init__: ValueError if a rule is broken
        info = fpk.describe(data)
        declared = {t["name"]: tuple(t["shape"]) for t in info["tensors"]}
        decoded = {name: tuple(t.shape) for name, t in c.state_dict().items()}
        assert decoded == declared, f"decoded shapes {decoded} differ from the header's {declared}"
        fpk.encode(c, entropy=False)  # whatever decodes can be written again (meta included)
        return "decoded"
    except CaseTimeout:
        raise AssertionError(f"a case took more than {limit} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def within_limits(what: str, size: int | None, cpu: float, grown: float | None) -> None:
    """AssertionError if a case of ``size`` bytes (at most MAX_FILE; None: known to be) cost more than
    LIMIT or MEMORY_MIB."""
    if size is None or size <= MAX_FILE:
        what = what if size is None else f"{what} ({size} bytes)"
        assert cpu <= LIMIT, f"{what}: {cpu:.2f} s of CPU, limit {LIMIT} s"
        assert grown is None or grown <= MEMORY_MIB, f"{what}: {grown:.0f} MiB, limit {MEMORY_MIB}"


def run(family: str, cases: Iterable[bytes], expect: str | None = None, limit: float = HANG) -> Counter:
    """Check every case, count it under ``family``; ``expect`` requires one outcome for all."""
    seen: Counter = Counter()
    with bounded():
        for i, data in enumerate(cases):
            before = peak_reset()
            start = time.process_time()
            try:
                outcome = check(data, limit)
            except BaseException as exc:
                raise AssertionError(f"{family} case {i} ({len(data)} bytes): {exc!r}") from exc
            cpu = time.process_time() - start
            if cpu > LIMIT:  # a loaded machine only adds time: the better of two runs is the case's cost
                start = time.process_time()
                check(data, limit)
                cpu = min(cpu, time.process_time() - start)
            within_limits(f"{family} case {i}", len(data), cpu, peak_growth(before))
            if expect is not None:
                assert outcome == expect, f"{family} case {i}: {outcome}, expected {expect}"
            note(family, outcome, cpu, count=False)
            seen[outcome] += 1
    COUNTS[family] += sum(seen.values())
    OUTCOMES.update(seen)
    return seen


def note(family: str, outcome: str, seconds: float, count: bool = True) -> None:
    """Record one case's time (and, with ``count``, its outcome) for the report."""
    global SLOWEST_CASE
    SLOWEST[family] = max(SLOWEST.get(family, 0.0), seconds)
    if seconds > SLOWEST_CASE[1] and "xfail" not in family:  # a known failure is listed, not the headline
        SLOWEST_CASE = (family, seconds)
    if count:
        COUNTS[family] += 1
        OUTCOMES[outcome] += 1


def peak_reset() -> int | None:
    """Reset the process's peak resident memory to its current size (KiB); None where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return proc_status_kib("VmRSS")


def peak_growth(before: int | None) -> float | None:
    """MiB the peak resident memory grew since :func:`peak_reset` returned ``before``."""
    peak = proc_status_kib("VmHWM") if before is not None else None
    return None if peak is None else (peak - before) / 1024


def measure(data: bytes, limit: float = 60.0, traced: bool = True, count: bool = True) -> tuple[str, float, float]:
    """(outcome, peak MiB traced by tracemalloc, CPU seconds) of decoding ``data`` and dequantizing it.

    tracemalloc sees Python objects and numpy buffers: what the decoder asks for, whether or not
    the pages are ever touched (so it is an upper bound on the resident memory it costs). It slows
    code that makes many small objects, so ``traced=False`` only times the decode (peak 0).
    """
    gc.collect()
    if traced:
        tracemalloc.start()
    start = time.process_time()
    with bounded():
        signal.setitimer(signal.ITIMER_REAL, limit, 0.1)
        try:
            fpk.decode(data).state_dict()
            outcome = "decoded"
        except FormatError as exc:
            _one_line(exc)
            outcome = "error"
        except CaseTimeout:
            raise AssertionError(f"decoding took more than {limit} s") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            peak = tracemalloc.get_traced_memory()[1] / 2**20 if traced else 0.0
            tracemalloc.stop()
    seconds = time.process_time() - start
    if count:
        note("bombs", outcome, seconds)
    return outcome, peak, seconds


def report() -> str:
    """One line per family plus a total, for the terminal summary."""
    lines = [
        f"  {family:<38} {n:>7} cases  slowest {SLOWEST.get(family, 0) * 1000:7.1f} ms CPU"
        for family, n in sorted(COUNTS.items())
    ]
    total = sum(COUNTS.values())
    lines.append(f"  {'total':<38} {total:>7} cases  ({OUTCOMES['error']} FormatError, "
                 f"{OUTCOMES['decoded']} decoded to the declared shapes, 0 other outcomes)")  # fmt: skip
    lines.append(f"  slowest case: {SLOWEST_CASE[0]}, {SLOWEST_CASE[1] * 1000:.1f} ms of CPU time")
    return "\n".join(lines)
