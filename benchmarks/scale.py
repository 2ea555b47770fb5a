"""Scaling of the file path and compression: synthetic models of 10M, 100M and 1B parameters.

Each model is a stack of transformer-like blocks (seeded): per block the weights ``(3d, d)``,
``(d, d)``, ``(4d, d)``, ``(d, 4d)`` (no tensor above 64M parameters) plus biases, with widths and
block counts chosen to reach the size. Weights are heavy-tailed (Student t, 4 degrees of freedom)
with a log-normal scale per layer; the Fisher estimate is log-normal and correlated with ``|w|``
(``log F = 1.5 log|w| + 0.7 z + c``), as a trained network's squared gradients are. Compression:
rate 0.9, OBD criterion, global ranking, waterfill allocation at 4 bits (the issue's settings).

Stages, each process started fresh and its peak RSS taken from ``resource.getrusage`` (the
high-water mark of the whole process, so the model and its Fisher are included):

- ``compress`` process: build model and Fisher (not timed), ``compress`` (timed; peak RSS after
  it), ``save`` (timed; peak RSS after it, the process's peak so far);
- ``load`` process: ``fisherpack.load`` (read, check, decode to a dense state dict);
- ``load_into`` process: build an empty model (not timed), ``fisherpack.load_into`` (streams the
  file into it).

Throughput is fp32 megabytes of weights (4 bytes a parameter) per second. Writes ``scale.json`` and
``scale.png`` (log-log: time and peak RSS per stage against size) into ``--out``. The machine is
shared: run the 1B point once, late, under ``nice``, after checking ``free -g``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fisherpack  # noqa: E402
from fisherpack.bench import environment  # noqa: E402
from fisherpack.bench import readme as readme_mod  # noqa: E402
from fisherpack.loading import load_into  # noqa: E402

SIZES = {"10M": 10_000_000, "100M": 100_000_000, "1B": 1_000_000_000}
CONFIG = dict(rate=0.9, criterion="obd", scope="global", allocation="waterfill", bits=4.0)


def layout(params: int) -> tuple[int, int]:
    """(width d, blocks) whose 12 d**2 weights per block come closest to ``params``."""
    d = 128 if params < 5_000_000 else 512 if params < 50_000_000 else 1024 if params < 500_000_000 else 2048
    return d, max(1, round(params / (12 * d * d)))


class Synthetic(nn.Module):
    def __init__(self, params: int) -> None:
        super().__init__()
        d, blocks = layout(params)
        shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]
        self.layers = nn.ModuleList(
            nn.Linear(i, o, device="meta") for _ in range(blocks) for o, i in shapes
        )  # meta: no memory until filled

    def materialize(self, seed: int) -> dict[str, torch.Tensor]:
        """Fill the weights in place (seeded) and return a matching Fisher estimate."""
        gen = torch.Generator().manual_seed(seed)
        fisher = {}
        self.layers = self.layers.to_empty(device="cpu")
        with torch.no_grad():
            for name, p in self.named_parameters():
                scale = math.exp(0.5 * torch.randn(1, generator=gen).item()) / math.sqrt(p.shape[-1])
                for row in range(0, p.shape[0], 256):  # in slices: few temporaries at a time
                    block = p[row : row + 256]
                    z = torch.randn(block.shape, generator=gen)
                    chi = torch.randn((4, *block.shape), generator=gen).square_().sum(0).div_(4).sqrt_()
                    block.copy_(z.div_(chi).mul_(scale))  # Student t, 4 degrees of freedom
                f = torch.empty_like(p)
                for row in range(0, p.shape[0], 256):
                    w = p[row : row + 256].abs().clamp_min_(1e-12).log_().mul_(1.5)
                    f[row : row + 256] = w.add_(torch.randn(w.shape, generator=gen).mul_(0.7)).sub_(4.0).exp_()
                fisher[name] = f
        return fisher


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(stage: str, params: int, path: Path, seed: int) -> dict:
    torch.set_num_threads(1)
    out: dict = {}
    if stage == "compress":
        model = Synthetic(params)
        fisher = model.materialize(seed)
        out["params"] = sum(p.numel() for p in model.parameters())
        out["rss_before_gb"] = _rss_gb()
        start = time.perf_counter()
        c = fisherpack.compress(model, fisher, fisherpack.CompressConfig(**CONFIG))
        out["compress_s"], out["compress_rss_gb"] = time.perf_counter() - start, _rss_gb()
        start = time.perf_counter()
        out["file_bytes"] = fisherpack.save(c, path)
        out["save_s"], out["save_rss_gb"] = time.perf_counter() - start, _rss_gb()
    elif stage == "load":
        start = time.perf_counter()
        state = fisherpack.load(path, max_elements=params * 2).state_dict()
        out["load_s"], out["load_rss_gb"] = time.perf_counter() - start, _rss_gb()
        out["params"] = sum(t.numel() for t in state.values())
    else:
        model = Synthetic(params)
        model.layers = model.layers.to_empty(device="cpu")
        out["rss_before_gb"] = _rss_gb()
        start = time.perf_counter()
        load_into(model, path, max_elements=params * 2)  # a trusted file: lift the default cap of 2**28 entries
        out["load_into_s"], out["load_into_rss_gb"] = time.perf_counter() - start, _rss_gb()
    return out


def run_size(label: str, params: int, seed: int, workdir: Path) -> dict:
    path = workdir / f"scale-{label}.fpk"
    result = {"label": label}
    for stage in ("compress", "load", "load_into"):
        cmd = [sys.executable, __file__, "--child", stage, "--params", str(params), "--path", str(path)]
        done = subprocess.run(cmd + ["--seed", str(seed)], capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{label} {stage} failed:\n{done.stderr[-3000:]}")
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    fp32_mb = 4 * result["params"] / 1e6
    result["fp32_gb"] = fp32_mb / 1e3
    for stage in ("compress", "save", "load", "load_into"):
        result[f"{stage}_mb_per_s"] = fp32_mb / result[f"{stage}_s"]
        result[f"{stage}_s_per_gparam"] = result[f"{stage}_s"] / result["params"] * 1e9
    result["peak_rss_over_fp32"] = max(result[k] for k in result if k.endswith("_rss_gb")) / result["fp32_gb"]
    path.unlink(missing_ok=True)
    return result


def render(results: dict) -> str:
    """The README's paragraph on throughput, from scale.json (tests check the README holds it)."""
    rows = sorted(results["sizes"].values(), key=lambda r: r["params"])
    lines = [
        "| parameters | fp32 | compress | save | load (dense) | load_into (streamed) | peak RSS / fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speeds = " | ".join(f"{r[f'{s}_mb_per_s']:.0f} MB/s" for s in ("compress", "save", "load", "load_into"))
        lines.append(
            f"| {r['params'] / 1e6:,.0f}M | {r['fp32_gb']:.2f} GB | {speeds} | {r['peak_rss_over_fp32']:.2f}x |"
        )
    env = results["environment"]
    lines.append("")
    when = f"{env['cpu']}, commit {str(env['git_commit'])[:7]}, {env['date'][:10]}"
    lines.append(f"One thread, {when}, on a shared machine (other jobs ran at the same time). "
                 "Rerun: `nice python benchmarks/scale.py --sizes 10M,100M,1B`.")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results["sizes"].values(), key=lambda r: r["params"])
    x = [r["params"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in ("compress", "save", "load", "load_into"):
        ax_t.plot(x, [r[f"{stage}_s"] for r in rows], "o-", label=stage)
        ax_m.plot(x, [r[f"{stage}_rss_gb"] for r in rows], "o-", label=stage)
    ax_m.plot(x, [3 * r["fp32_gb"] for r in rows], "k--", label="3x fp32 size (target)")
    for ax, ylabel in ((ax_t, "seconds (one thread)"), (ax_m, "peak RSS of the process, GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle("fisherpack at scale: rate 0.9, OBD, waterfill 4 bits", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10M,100M", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", action="store_true", help="keep the sizes already in scale.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--params", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.params, Path(args.path), args.seed)))
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "scale.json"
    results = {"environment": environment.record(date=time.strftime("%Y-%m-%d %H:%M:%S %z")), "config": CONFIG}
    results["sizes"] = json.loads(previous.read_text())["sizes"] if args.merge and previous.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:  # not under --out: nothing to commit by mistake
        for label in args.sizes.split(","):
            results["sizes"][label] = run_size(label, SIZES[label], args.seed, Path(tmp))
            r = results["sizes"][label]
            print(f"{label}: compress {r['compress_mb_per_s']:.0f} MB/s, save {r['save_mb_per_s']:.0f} MB/s, "
                  f"load {r['load_mb_per_s']:.0f} MB/s, load_into {r['load_into_mb_per_s']:.0f} MB/s, "
                  f"peak RSS {r['peak_rss_over_fp32']:.2f}x fp32", flush=True)  # fmt: skip
    previous.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    plot(results, out / "scale.png")
    if out.resolve() == (ROOT / "benchmarks" / "results").resolve():
        update_readme(ROOT / "README.md", results)
    return results


def update_readme(readme: Path, results: dict) -> None:
    """Replace the README's text between the scale markers by :func:`render`."""
    readme_mod.rewrite(readme, readme_mod.replace_section(readme.read_text(), "scale", render(results)), check=False)


if __name__ == "__main__":
    main()
