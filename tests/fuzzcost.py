"""Cost attacks for the fuzz suite: small files built to make a reader spend time or memory.

Each case is a file of at most 1 MB that every reader (``decode``, ``describe``, the decoded state
dict, ``export.safetensors_bytes`` with the reader's default cap) must decode or refuse with one
FormatError line within LIMIT_SECONDS of CPU time and LIMIT_MIB of resident-memory growth (issue 16).
Pipes are attacked through ``fpk.container.read_bytes`` on a pipe that a thread keeps writing to.

:func:`measure` times a call (CPU time) and reads the process's peak resident memory before and
after it (``/proc/self/clear_refs`` resets the peak, Linux >= 4.0): the pages really touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

import fuzzcases as fz

from fisherpack import export
from fisherpack.errors import FormatError
from fisherpack.fpk import container as fpk
from fisherpack.fpk import header

LIMIT_SECONDS, LIMIT_MIB, MAX_FILE = fz.LIMIT, fz.MEMORY_MIB, fz.MAX_FILE


def measure(fn: Callable[[], object], limit: float = 30.0) -> tuple[str, float, float | None]:
    """(outcome, CPU seconds, peak resident growth in MiB or None without /proc) of ``fn()``.

    The outcome is "decoded", or "error" for a one-line FormatError; anything else propagates.
    """
    before = fz.peak_reset()
    start = time.process_time()
    with fz.bounded():
        signal.setitimer(signal.ITIMER_REAL, limit, 0.1)
        try:
            fn()
            outcome = "decoded"
        except FormatError as exc:
            fz._one_line(exc)
            outcome = "error"
        except fz.CaseTimeout:
            raise AssertionError(f"took more than {limit} s") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome, time.process_time() - start, fz.peak_growth(before)


def readers(data: bytes) -> dict[str, Callable[[], object]]:
    """What inspect, load (and eval) and export --safetensors each do with a file's bytes."""

    def safetensors() -> object:
        with contextlib.suppress(ImportError):
            return export.safetensors_bytes(fpk.decode(data), max_elements=header.default_max_elements(len(data)))

    return {"inspect": lambda: fpk.describe(data), "load": lambda: fpk.decode(data).state_dict(),
            "export": safetensors}  # fmt: skip


def every_reader(data: bytes) -> None:
    """Every reader in turn (FormatError where they refuse)."""
    for read in readers(data).values():
        read()


def _keys(n: int, tail: str) -> bytes:
    return ('{"meta":{' + ",".join(f'"k{i}":0' for i in range(n)) + tail + '},"tensors":[]}').encode()


def _alias_file(count: int) -> bytes:
    """One tensor of the most entries a small file may declare, tied under ``count`` names."""
    base = {"kind": "quant", "name": "w", "shape": [1 << 20], "kept": 0, "mask": {"encoding": "gaps", "width": 0,
            "length": 0}, "groups": [{"bits": 1, "exp": 0, "grid": "int", "count": 0}],
            "codes": [{"encoding": "packed", "length": 0}]}  # fmt: skip
    aliases = [{"kind": "alias", "name": f"a{i}", "target": "w"} for i in range(count)]
    return fz.frame_json({"meta": {}, "tensors": [base, *aliases]}, b"")


def files() -> dict[str, bytes]:
    """Cost-attack files by name, each at most MAX_FILE bytes."""
    out = {
        "many keys: 90k in meta, the first one again at the end": fz.frame_json(_keys(90_000, ',"k0":1'), b""),
        "many keys: 90k distinct in meta": fz.frame_json(_keys(90_000, ""), b""),
        "many keys: 60k unknown keys in one tensor entry": fz.frame_json(
            (
                '{"meta":{},"tensors":[{"kind":"raw","name":"t",' + ",".join(f'"x{i}":0' for i in range(60_000)) + "}]}"
            ).encode(),
            b"",
        ),  # fmt: skip
        "aliases: 2**20 entries under 100 names": _alias_file(100),
        "aliases: 2**20 entries under 2000 names": _alias_file(2000),
    }
    for name, data in out.items():
        assert len(data) <= MAX_FILE, (name, len(data))
    return out


def tiny_rans_streams() -> tuple[int, bytes]:
    """(count, file): as many valid one-symbol rANS code streams (each with its own table) as the
    header's separator cap lets through, one per tensor."""
    import json

    import numpy as np

    from fisherpack.fpk import entropy

    blob = entropy.encode_stream(np.zeros(1, np.int64), 2)
    assert blob is not None
    group = {"bits": 1, "exp": 0, "grid": "int", "count": 1}
    streams = {"mask": {"encoding": "all", "length": 0}, "codes": [{"encoding": "ans", "length": len(blob)}]}

    def entry(i: int) -> dict:
        return {"kind": "quant", "name": f"w{i}", "shape": [1], "kept": 1, "groups": [group], **streams}

    per_entry = sum(json.dumps(entry(0)).count(c) for c in "[{,:") + 1  # and the comma between entries
    count = (header.MAX_SEPARATORS - 8) // per_entry
    return count, fz.frame_json({"meta": {}, "tensors": [entry(i) for i in range(count)]}, blob * count)


def read_through_pipe(data: bytes, tail: int | None) -> Callable[[], object]:
    """A call that reads ``data`` then ``tail`` more zero bytes (None: endlessly) from a pipe."""

    def run() -> None:
        r, w = os.pipe()
        stop = threading.Event()

        def write() -> None:
            with contextlib.suppress(OSError), os.fdopen(w, "wb") as fh:
                fh.write(data)
                sent, chunk = 0, bytes(1 << 16)
                while not stop.is_set() and (tail is None or sent < tail):
                    fh.write(chunk)
                    sent += len(chunk)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            fpk.decode(fpk.read_bytes(f"/proc/self/fd/{r}"))
        finally:
            stop.set()
            os.close(r)  # the writer's next write fails with EPIPE and it ends
            writer.join(5)

    return run
