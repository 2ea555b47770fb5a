"""The inference table of the README, made from benchmarks/results/inference.json (never by hand).

``python benchmarks/report.py`` replaces the lines between ``<!-- inference:start -->`` and
``<!-- inference:end -->`` in README.md; tests/test_benchmarks.py checks that they agree.
"""

from __future__ import annotations

from .readme import replace_section

SECTION = "inference"
NAMES = {"lenet5": "LeNet-5", "mlp4096": "MLP 784-4096-4096-10"}


def _size(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def render(results: dict) -> str:
    """The README's Markdown for one benchmark run."""
    head = ["network", "kept weights", "file (fp32)", "decode + load (without rANS)", "runtime setup"]
    batches = sorted({b for r in results["networks"].values() for b in r["batches"]}, key=int)
    head += [f"batch {b}: dense → runtime" for b in batches]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["networks"].items():
        source = r.get("source", "random weights")
        loaded = r.get("loaded_params", r["params"])
        smaller = f" (loads as {loaded / r['params']:.0%} of the weights)" if loaded < r["params"] else ""
        cells = [
            NAMES.get(name, name) + ("" if source == "random weights" else f", `{source}`") + smaller,
            f"{r['kept_fraction']:.1%} of {r['params'] / 1e6:.2f}M",
            f"{_size(r['file_bytes'])} ({_size(r['fp32_bytes'])})",
            f"{1e3 * (r['decode_s'] + r['load_s']):.0f} ms "
            f"({1e3 * (r['decode_plain_s'] + r['load_s']):.0f} ms, {_size(r['file_bytes_plain'])})",
            f"{r['optimize_s']:.1f} s",
        ]
        for b in batches:
            m = r["batches"][b]
            cpu = f"; CPU time {m['cpu_speedup']:.1f}x" if "cpu_speedup" in m else ""
            cells.append(f"{_ms(m['dense_ms'])} → {_ms(m['runtime_ms'])} ms (**{m['speedup']:.1f}x**{cpu})")
        rows.append("| " + " | ".join(cells) + " |")
    env = results["environment"]
    rows.append("")
    rows.append(
        "Runtime setup is `runtime.optimize`, which times every candidate layer at every batch size. "
        f"Median wall ms per forward pass over {results['repeats']} interleaved samples of about 20 ms each "
        "(CPU time: of the computing thread, which ignores waits for a core); "
        f"{env['cpu']}, "
        f"{env['threads']} thread(s), torch {env['torch']}, commit {env['git_commit'][:7]}, {env['date'][:10]}. "
        "Rerun: `python benchmarks/inference.py && python benchmarks/report.py`."
    )
    return "\n".join(rows)


def update(readme: str, results: dict) -> str:
    """``readme`` with its inference section made anew from ``results``."""
    return replace_section(readme, SECTION, render(results))
