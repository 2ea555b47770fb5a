"""The C runtime measured like a device would be: flash, RAM, agreement with PyTorch, time per image.

For the committed ``benchmarks/results/lenet5.fpk`` and ``lenet300.fpk`` (and, unless ``--quick``,
a TinyResNet from examples/tinyres.py: trained one epoch on MNIST, compressed and exported through
the command line as the README shows), ``fisherpack export --format c`` is built three ways:

- ``packed``: the file's form, the weights decoded while computing (what the export writes);
- ``f32`` and ``i8``: the same model and kernels with dense weight arrays, float32 or int8 with one
  scale per tensor (zeros included), the layouts dense C deployments use; biases stay float32.

Per build: flash = ``text + data`` of the object file from ``size`` (code, constants, weights; no
libm functions, no startup code) at ``-Os`` on x86-64 and, where ``arm-none-eabi-gcc`` exists, for
``-mcpu=cortex-m4 -mthumb -Os``; RAM = the static buffers (``bss``, the arena and plane the header
states) + the stack, bounded by the sum of every function's frame from ``-fstack-usage`` (no
recursion, so the deepest call chain needs at most that); the caller's input and output buffers
are listed apart. The -O2 program classifies the real MNIST test images (all 10,000 unless
``--images``); its logits are compared with PyTorch's from the same file, and the time inside
``NAME_run`` (``clock()``, batch 1) with PyTorch's forward at batch 1 on the same CPU, one thread.

Writes ``c_runtime.json`` and ``c_runtime.png`` into ``--out`` (default: benchmarks/results);
``--readme`` then rewrites the README's table from the committed JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fisherpack  # noqa: E402
from fisherpack import cexport, cli  # noqa: E402
from fisherpack.bench import environment  # noqa: E402
from fisherpack.bench import readme as readme_mod  # noqa: E402
from fisherpack.fpk.fileio import atomic_write_bytes  # noqa: E402

X86 = ["-Os"]
ARM = ["-mcpu=cortex-m4", "-mthumb", "-Os"]
C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
MODES = ("packed", "i8", "f32")


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    return done


def object_sizes(cc: str, flags: list[str], folder: Path, name: str) -> dict:
    """Sections of NAME.o and the stack bound from its .su file."""
    obj = folder / f"{name}{'_arm' if 'arm' in cc else ''}.o"
    _run([cc, *C_FLAGS, *flags, "-fstack-usage", "-c", f"{name}.c", "-o", obj.name], folder)
    size = "arm-none-eabi-size" if "arm" in cc else "size"
    text, data, bss = (int(v) for v in _run([size, obj.name], folder, text=True).stdout.split()[6:9])
    frames = {}
    for line in obj.with_suffix(".su").read_text().splitlines():
        where, nbytes, _ = line.rsplit("\t", 2)
        frames[where.rsplit(":", 1)[-1]] = int(nbytes)
    stack = sum(frames.values())
    return {"text": text, "data": data, "bss": bss, "flash_bytes": text + data, "stack_frames": frames,
            "stack_bytes": stack, "ram_bytes": bss + stack}  # fmt: skip


def classify(folder: Path, name: str, flags: list[str], x: torch.Tensor) -> tuple[np.ndarray, float]:
    """(logits (N, classes), seconds inside NAME_run) of the program built with ``flags``."""
    exe = folder / f"{name}{flags[0]}"
    _run(["gcc", *C_FLAGS, *flags, "-o", exe.name, f"{name}.c", f"{name}_main.c", "-lm"], folder)
    done = _run([str(exe)], folder, input=x.numpy().astype(np.float32).tobytes())
    seconds = float(done.stderr.decode().split()[2])
    return np.frombuffer(done.stdout, np.float32).reshape(len(x), -1), seconds


def pytorch_batch1(model, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """(logits, seconds) of PyTorch's forward, one image at a time."""
    out = []
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(len(x)):
            out.append(model(x[i : i + 1]))
        seconds = time.perf_counter() - start
    return torch.cat(out).numpy(), seconds


def measure(name: str, model, compressed, x: torch.Tensor, y: torch.Tensor, work: Path, modes=MODES) -> dict:
    model = model.eval()
    ref, torch_s = pytorch_batch1(model, x)
    truth = y.numpy()
    result = {"images": len(x), "pytorch": {"test_error": float((ref.argmax(1) != truth).mean()),
                                            "us_per_image_batch1": 1e6 * torch_s / len(x)}}  # fmt: skip
    for mode in modes:
        folder = work / f"{name}_{mode}"
        folder.mkdir()
        files = cexport.to_c(model, compressed, x[:1], name, weights=mode)
        for fname, text in files.items():
            (folder / fname).write_text(text)
        r = {"x86_64": object_sizes("gcc", X86, folder, name)}
        if shutil.which("arm-none-eabi-gcc"):
            r["cortex_m4"] = object_sizes("arm-none-eabi-gcc", ARM, folder, name)
        header = files[f"{name}.h"]
        r["weight_bytes"] = int(header.split("_WEIGHT_BYTES ")[1].split()[0])
        r["io_bytes"] = 4 * (x[0].numel() + ref.shape[1])  # the caller's input and output
        for flags in (["-Os"], ["-O2"]):
            logits, seconds = classify(folder, name, flags, x)
            r[f"us_per_image{flags[0]}"] = 1e6 * seconds / len(x)
        pred = logits.argmax(1)
        r.update(test_error=float((pred != truth).mean()), same_class=float((pred == ref.argmax(1)).mean()),
                 max_abs_logit_diff=float(np.abs(logits - ref).max()))  # fmt: skip
        result[mode] = r
    return result


def tinyres(work: Path) -> tuple:
    """examples/tinyres.py through the README's command lines: train 1 epoch, compress, read back."""
    from examples.tinyres import build
    from examples.tinyres import main as train

    train(["--out", str(work / "tinyres.pt")])
    fpk = str(work / "tinyres.fpk")
    argv = ["compress", "--model", "examples.tinyres:build", "--checkpoint", str(work / "tinyres.pt"), "--rate",
            "0.7", "--override", "stem.weight:bits=8", "--out", fpk]  # fmt: skip
    if cli.main(argv) != 0:
        raise RuntimeError("compressing tinyres failed")
    compressed = fisherpack.load(fpk)
    return fisherpack.load_into(build(), compressed), compressed


def plot(results: dict, path: Path) -> None:
    from fisherpack.bench.plots import _pyplot

    plt = _pyplot()
    names = list(results["models"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, mode in enumerate(m for m in MODES if m in results["models"][names[0]]):
        flash = [results["models"][n][mode]["x86_64"]["flash_bytes"] / 1024 for n in names]
        a.bar(np.arange(len(names)) + 0.27 * (i - 1), flash, 0.27, label=mode)
        us = [results["models"][n][mode]["us_per_image-O2"] for n in names]
        b.bar(np.arange(len(names)) + 0.2 * (i - 1.5), us, 0.2, label=f"C {mode} (-O2)")
    b.bar(np.arange(len(names)) + 0.2 * 1.5, [results["models"][n]["pytorch"]["us_per_image_batch1"] for n in names],
          0.2, label="PyTorch")  # fmt: skip
    a.axhline(32, color="k", lw=0.8, ls="--", label="32 KB")
    a.set(yscale="log", ylabel="flash: code + weights, KB (x86-64 -Os)", xticks=range(len(names)), xticklabels=names)
    b.set(ylabel="microseconds per image, batch 1", xticks=range(len(names)), xticklabels=names)
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def readme_table(results: dict) -> str:
    """The README's table, from the JSON (tests/test_cexport.py checks that the README holds it)."""
    rows = ["| model | weights | flash x86-64 | flash Cortex-M4 | RAM | test error C / PyTorch | same class "
            "| max logit diff | us per image C / PyTorch |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["models"].items():
        pt = r["pytorch"]
        for mode in (m for m in MODES if m in r):
            m = r[mode]
            arm = f"{m['cortex_m4']['flash_bytes']:,} B" if "cortex_m4" in m else "-"
            rows.append(
                f"| {name} | {mode} | {m['x86_64']['flash_bytes']:,} B | {arm} | {m['x86_64']['ram_bytes']:,} B "
                f"| {m['test_error']:.2%} / {pt['test_error']:.2%} | {m['same_class']:.2%} "
                f"| {m['max_abs_logit_diff']:.1e} | {m['us_per_image-O2']:.0f} / {pt['us_per_image_batch1']:.0f} |"
            )
    env = results["environment"]
    rows.append(
        f"\n{env['gcc']}; {env['arm_gcc'] or 'no ARM compiler'}; {env['cpu']}, one thread, torch {env['torch']}, "
        f"commit {(env['git_commit'] or '?')[:7]}, {env['date'][:10]}. "
        "Rerun: `python benchmarks/c_runtime.py && python benchmarks/c_runtime.py --readme`."
    )
    if "lenet5" in results["models"]:
        r = results["models"]["lenet5"]
        m = r["packed"]
        arm = f", {m['cortex_m4']['flash_bytes']:,} on Cortex-M4" if "cortex_m4" in m else ""
        rows.insert(0, f"LeNet-5 from `{r['file']}` in C: **{m['x86_64']['flash_bytes']:,} bytes of flash** (code + "
                       f"weights, x86-64 `-Os`{arm}; dense int8 weights alone take {r['i8']['weight_bytes']:,}) and "
                       f"**{m['x86_64']['ram_bytes']:,} bytes of RAM** (static buffers and stack), and on all "
                       f"{r['images']:,} MNIST test images the test error of PyTorch from the same file "
                       f"({m['test_error']:.2%}).\n")  # fmt: skip
    return "\n".join(rows) + "\n"


def update_readme(results: dict, readme: Path = ROOT / "README.md") -> None:
    readme_mod.rewrite(
        readme, readme_mod.replace_section(readme.read_text(), "c_runtime", readme_table(results)), False
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--images", type=int, default=10000, help="MNIST test images to classify (default: all)")
    p.add_argument("--models", default="lenet5,lenet300", help="registry models, comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help="weight layouts to build, comma-separated")
    p.add_argument("--readme", action="store_true", help="only rewrite the README table from the committed JSON")
    p.add_argument("--quick", action="store_true", help="no TinyResNet (it trains for minutes): a smoke test")
    args = p.parse_args(argv)
    if args.readme:
        results = json.loads((ROOT / "benchmarks" / "results" / "c_runtime.json").read_text())
        update_readme(results)
        return results
    torch.set_num_threads(1)
    _, _, x, y = fisherpack.data.load().tensors()
    x, y = x[: args.images], y[: args.images]
    modes = tuple(args.modes.split(","))
    gcc = _run(["gcc", "--version"], ROOT, text=True).stdout.splitlines()[0]
    arm = shutil.which("arm-none-eabi-gcc")
    arm = _run([arm, "--version"], ROOT, text=True).stdout.splitlines()[0] if arm else None
    env = environment.record(date=time.strftime("%Y-%m-%d %H:%M:%S %z"), gcc=gcc, arm_gcc=arm)
    results = {"environment": env, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            path = ROOT / "benchmarks" / "results" / f"{name}.fpk"
            compressed = fisherpack.load(path)
            model = fisherpack.load_into(fisherpack.models.build(name), compressed)
            results["models"][name] = {"file": f"benchmarks/results/{name}.fpk", "file_bytes": path.stat().st_size,
                                       **measure(name, model, compressed, x, y, work, modes)}  # fmt: skip
        if not args.quick:
            model, compressed = tinyres(work)
            results["models"]["tinyres"] = {"file": "examples/tinyres.py, 1 epoch, --rate 0.7",
                                            **measure("tinyres", model, compressed, x, y, work, modes)}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "c_runtime.json", (json.dumps(results, indent=2, sort_keys=True) + "\n").encode())
    plot(results, out / "c_runtime.png")
    return results


if __name__ == "__main__":
    for name, r in main()["models"].items():
        for mode in (m for m in MODES if m in r):
            m = r[mode]
            arm = f", Cortex-M4 flash {m['cortex_m4']['flash_bytes']:,} B" if "cortex_m4" in m else ""
            torch_r = r["pytorch"]
            print(f"{name} {mode}: flash {m['x86_64']['flash_bytes']:,} B, RAM {m['x86_64']['ram_bytes']:,} B{arm}, "
                  f"error {m['test_error']:.2%} (PyTorch {torch_r['test_error']:.2%}), same class "
                  f"{m['same_class']:.2%}, max logit diff {m['max_abs_logit_diff']:.1e}, "
                  f"{m['us_per_image-O2']:.0f} us/image (PyTorch {torch_r['us_per_image_batch1']:.0f})")  # fmt: skip
