"""export --format c: the generated C99, compiled with the system compiler, against PyTorch on the same file.

Tiny models keep this fast (a compile is ~0.2 s); the full 10,000-image check of the committed
LeNet files is benchmarks/c_runtime.py.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import benchmark_script
from torch import nn
from torch.nn import functional as F

import fisherpack
from fisherpack import cexport, cli
from fisherpack.data.idx import FILES
from fisherpack.errors import ConfigError
from fisherpack.fpk.tensors import QuantTensor

ROOT = Path(__file__).resolve().parents[1]
CC = shutil.which("gcc") or shutil.which("cc")
FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"]
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (gcc or cc) on PATH to build the generated C")


def run_c(files: dict[str, str], folder: Path, x: torch.Tensor) -> np.ndarray:
    """Compile NAME.c with its example main and run it on ``x`` (N, ...): (N, outputs) float32."""
    folder.mkdir(exist_ok=True)
    for fname, text in files.items():
        (folder / fname).write_text(text)
    name = next(f for f in files if f.endswith(".h"))[:-2]
    exe = folder / name
    done = subprocess.run([CC, *FLAGS, "-o", str(exe), f"{name}.c", f"{name}_main.c", "-lm"], cwd=folder,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ran = subprocess.run([str(exe)], input=x.numpy().astype(np.float32).tobytes(), capture_output=True)
    assert ran.returncode == 0 and ran.stderr.decode().startswith(f"{len(x)} inputs"), ran.stderr
    return np.frombuffer(ran.stdout, np.float32).reshape(len(x), -1)


def through_file(model: nn.Module, tmp_path: Path, **config) -> tuple[fisherpack.Compressed, nn.Module]:
    """Compress ``model`` (a random Fisher), write and read the file: (the file, the model decoded from it)."""
    torch.manual_seed(1)
    fisher = {n: torch.rand_like(p) + 0.1 for n, p in model.named_parameters()}
    config = fisherpack.CompressConfig(**{"rate": 0.6, "bits": 4, "quantize_biases": True, **config})
    fisherpack.save(fisherpack.compress(model, fisher, config), tmp_path / "m.fpk")
    compressed = fisherpack.load(tmp_path / "m.fpk")
    return compressed, fisherpack.load_into(copy.deepcopy(model), compressed).eval()


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    torch.manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.3, 0.3)
    return model.eval()


class Zoo2d(nn.Module):
    """(N, 3, 11, 11) -> (N, 5): every 2-d op of the C export, fused and on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.c3 = nn.Conv2d(8, 6, (3, 2), padding="same", bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.fc = nn.Linear(96, 5)
        self.bn4 = nn.BatchNorm1d(5)

    def forward(self, x):
        x = F.relu6(self.bn1(self.c1(x)))  # (8, 6, 6) conv + folded BN + relu6
        x = x + torch.tanh(self.c2(x))  # dilation, groups; residual add
        x = torch.sigmoid(x)
        x = self.pool(F.gelu(self.bn3(self.c3(x))))  # "same" padding, BN without bias, fused pool (3, 3)
        x = F.max_pool2d(x, 2, stride=1, padding=1, ceil_mode=True)  # (6, 4, 4) on its own
        x = 0.5 * x
        x = self.bn4(self.fc(x.view(x.size(0), -1)))
        return F.softmax(F.gelu(x, approximate="tanh"), dim=1)


class Zoo1d(nn.Module):
    """(N, 2, 20) -> (N, 3): 1-d convolution and pooling, a BN on its own, a Linear over rows."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv1d(4, 4, 3, dilation=2, groups=2, padding=2)
        self.bn = nn.BatchNorm1d(4)
        self.bn2 = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(torch.tensor([[0.5], [-1.0], [2.0], [1.5]]))
        self.rows = nn.Linear(2, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(12, 3), nn.ReLU())

    def forward(self, x):
        x = F.max_pool1d(torch.relu(self.c1(x)), 2)  # (4, 5) fused
        x = torch.relu(x + self.bn(self.c2(x)))
        x = self.bn2(F.avg_pool1d(x, 2))  # (4, 2) pool and BN on their own
        x = self.rows(x * self.scale)  # (4, 3): Linear over the last dim of each row
        return self.head(x).softmax(-1)


@needs_cc
@pytest.mark.parametrize(
    "net, shape, config",
    [
        (Zoo2d, (3, 11, 11), {"rate": 0.9}),  # positions as gaps
        (Zoo2d, (3, 11, 11), {"rate": 0.2, "groups": 4, "exclude": ("fc.weight",)}),  # bitmap, 4 groups, raw
        (Zoo1d, (2, 20), {"rate": 0.5, "groups": 2}),
    ],
)
def test_generated_c_matches_pytorch_from_the_same_file(tmp_path, net, shape, config):
    torch.manual_seed(0)
    compressed, model = through_file(randomize_batchnorm(net()), tmp_path, **config)
    x = torch.randn(64, *shape)
    files = cexport.to_c(model, compressed, x[:1], "net")
    with torch.no_grad():
        want = model(x).numpy()
    got = run_c(files, tmp_path / "c", x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert (got.argmax(1) == want.argmax(1)).all()
    code = files["net.c"]
    if config.get("groups", 1) > 1:
        assert ".id_bits = 2" in code or ".id_bits = 1" in code
    if config["rate"] < 0.5:
        assert "_mask[" in code  # most entries kept: positions as a bitmap
    else:
        assert re.search(r"\.gap_bits = [1-9]", code)  # few kept: positions as gaps
    assert bool(re.search(r"fp_w\d+_f32\[480\]", code)) == ("exclude" in config)  # raw fc.weight


def test_weights_stay_packed_at_their_widths(tmp_path):
    """The weight bytes in C are the packed streams, bit for bit the size the layout says (no dense copy)."""
    compressed, model = through_file(randomize_batchnorm(Zoo2d()), tmp_path, rate=0.9, groups=3)
    code = cexport.to_c(model, compressed, torch.zeros(1, 3, 11, 11), "net")["net.c"]
    for name, entry in compressed.tensors.items():
        if isinstance(entry, QuantTensor) and len(entry.shape) >= 2:  # BatchNorm folds into floats
            pos = np.flatnonzero(entry.mask)
            gaps = np.diff(pos, prepend=-1) - 1
            gap_bits, id_bits = int(gaps.max(initial=0)).bit_length(), (len(entry.bits) - 1).bit_length()
            bitmap = entry.numel < entry.kept * gap_bits  # the smaller way to say where the kept entries are
            bits = int(np.asarray(entry.bits)[entry.groups].sum()) + entry.kept * (id_bits + gap_bits * (not bitmap))
            assert f"_data[{max((bits + 7) // 8, 1)}]" in code, name
            assert (f"_mask[{(entry.numel + 7) // 8}]" in code) == bitmap
    sizes = [int(n) for n in re.findall(r"static const float \w+\[(\d+)\]", code)]
    assert max(sizes) <= 8  # per-channel BN factors only; never a weight tensor as floats


@needs_cc
def test_dense_baselines_compute_the_same_model(tmp_path):
    """The f32 and i8 layouts benchmarks/c_runtime.py measures: f32 equals the model, i8 its int8 rounding."""
    torch.manual_seed(0)
    compressed, model = through_file(randomize_batchnorm(Zoo1d()), tmp_path, rate=0.5)
    x = torch.randn(32, 2, 20)
    with torch.no_grad():
        want = model(x).numpy()
        got = run_c(cexport.to_c(model, compressed, x[:1], "net", weights="f32"), tmp_path / "f32", x)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        for m in (model.c1, model.c2, model.rows, model.head[2]):
            scale = m.weight.abs().max() / 127
            m.weight.copy_(torch.clamp(torch.round(m.weight / scale), -127, 127) * scale)
        got = run_c(cexport.to_c(model, compressed, x[:1], "net", weights="i8"), tmp_path / "i8", x)
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5, rtol=0)


@needs_cc
def test_static_buffers_are_the_sizes_the_header_states(tmp_path):
    compressed, model = through_file(randomize_batchnorm(Zoo2d()), tmp_path)
    files = cexport.to_c(model, compressed, torch.zeros(1, 3, 11, 11), "net")
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    subprocess.run([CC, *FLAGS, "-c", "net.c"], cwd=tmp_path, check=True)
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no `nm` tool to read the object's symbols")
    symbols = subprocess.run([nm, "-S", "net.o"], cwd=tmp_path, capture_output=True, text=True).stdout
    zeroed = {f[3]: int(f[1], 16) for f in map(str.split, symbols.splitlines()) if len(f) == 4 and f[2] in "bB"}
    macros = dict(re.findall(r"#define NET_(\w+) (\d+)", files["net.h"]))
    assert zeroed == {"fp_arena": int(macros["ARENA_BYTES"]), "fp_plane": int(macros["PLANE_BYTES"])}
    assert macros["INPUT_SIZE"] == "363" and macros["OUTPUT_SIZE"] == "5"


class SinNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sin(self.fc(x))


class ProductNet(SinNet):
    def forward(self, x):
        y = self.fc(x)
        return y * torch.relu(y)


class LstmNet(SinNet):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4)

    def forward(self, x):
        return self.lstm(self.fc(x))[0]


@pytest.mark.parametrize(
    "net, message",
    [
        (SinNet, "operation 'sin' (node 'sin') is not supported by the C export"),
        (ProductNet, "operation 'mul' (node 'mul') of two computed tensors ((4,), (4,)) is not supported"),
        (LstmNet, "operation 'LSTM' (node 'lstm') is not supported by the C export"),
    ],
)
def test_unsupported_operation_is_refused_naming_it(tmp_path, net, message):
    compressed, model = through_file(net(), tmp_path)
    with pytest.raises(ConfigError) as err:
        cexport.to_c(model, compressed, torch.zeros(1, 4), "net")
    assert str(err.value) == f"cannot export to C: {message}; see fisherpack/cexport/graph.py"


def test_cli_refuses_an_unsupported_operation_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "sinmodel.py").write_text(
        "import torch\n\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 4)\n\n    def forward(self, x):\n        return torch.sin(self.fc(x))\n"
    )
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = SinNet()
    fisherpack.save(fisherpack.compress(model, None, fisherpack.CompressConfig(criterion="magnitude",
                    allocation="uniform", bits=4)), "m.fpk")  # fmt: skip
    argv = ["export", "m.fpk", "--format", "c", "--out-dir", "out", "--model", "sinmodel:M", "--input-shape", "1,4"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "fisherpack: error: cannot export to C: operation 'sin' (node 'sin') is not supported by the C " \
                  "export; see fisherpack/cexport/graph.py\n"  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert cli.main(["export", "m.fpk", "--format", "c"]) == 1
    assert capsys.readouterr().err == "fisherpack: error: --format c writes several files: give --out-dir DIR\n"
    assert cli.main(["export", "m.fpk", "--format", "c", "--out-dir", "out", "--onnx", "m.onnx"]) == 1
    assert capsys.readouterr().err.startswith("fisherpack: error: --format c writes C only: export --safetensors")


@needs_cc
def test_user_model_with_batchnorm_and_residual_block_exports_through_the_cli(tmp_path, monkeypatch):
    """examples/tinyres.py (BatchNorm, a residual block, a custom per-channel scale) from the command line."""
    from examples.tinyres import build

    torch.manual_seed(0)
    model = randomize_batchnorm(build())
    with torch.no_grad():
        model.scale.scale.uniform_(0.5, 1.5)
    torch.save({"model": model.state_dict()}, tmp_path / "tinyres.pt")
    monkeypatch.chdir(ROOT)
    common = ["--model", "examples.tinyres:build"]
    fpk, out = str(tmp_path / "tinyres.fpk"), str(tmp_path / "c")
    assert cli.main(["compress", *common, "--checkpoint", str(tmp_path / "tinyres.pt"), "--rate", "0.7",
                     "--criterion", "magnitude", "--allocation", "uniform", "--out", fpk]) == 0  # fmt: skip
    assert cli.main(["export", fpk, "--format", "c", "--out-dir", out, "--input-shape", "1,1,28,28", *common]) == 0
    files = {p.name: p.read_text() for p in Path(out).iterdir()}
    assert sorted(files) == ["tinyres.c", "tinyres.h", "tinyres_main.c"]
    decoded = fisherpack.load_into(build(), fpk).eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        want = decoded(x).numpy()
    np.testing.assert_allclose(run_c(files, tmp_path / "build", x), want, atol=1e-4, rtol=0)


def _mnist_test_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    folder = Path(os.environ.get("FISHERPACK_DATA") or "~/.cache/fisherpack/mnist").expanduser()
    if not all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in FILES.values()):
        pytest.skip(f"real MNIST is not cached in {folder}: run `python -m fisherpack reproduce` once to fetch it")
    _, _, x, y = fisherpack.data.load(folder).tensors()
    return x[:n], y[:n]


@needs_cc
@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_committed_file_classifies_real_mnist_like_pytorch(tmp_path, name):
    x, y = _mnist_test_images(200)
    path = ROOT / "benchmarks" / "results" / f"{name}.fpk"
    compressed = fisherpack.load(path)
    model = fisherpack.load_into(fisherpack.models.build(name), compressed).eval()
    with torch.no_grad():
        want = model(x).numpy()
    got = run_c(cexport.to_c(model, compressed, x[:1], name), tmp_path, x)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (got.argmax(1) != y.numpy()).sum() == (want.argmax(1) != y.numpy()).sum()


@needs_cc
def test_readme_c_section_runs_as_written(tmp_path):
    """The README's commands to build the generated files into a program, run verbatim from the repository root."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running it in C") :]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "benchmarks" / "results", work / "benchmarks" / "results",
                    ignore=shutil.ignore_patterns("*.json", "*.png", "*.md"))  # fmt: skip
    x = torch.randn(3, 1, 28, 28)
    (work / "images.f32").write_bytes(x.numpy().astype(np.float32).tobytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["sh", "-ec", block.replace("python ", f"{sys.executable} ")],
                          cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = np.frombuffer((work / "logits.f32").read_bytes(), np.float32).reshape(3, 10)
    model = fisherpack.load_into(fisherpack.models.build("lenet5"), ROOT / "benchmarks/results/lenet5.fpk").eval()
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)


def _benchmark():
    return benchmark_script("c_runtime")


def test_committed_c_runtime_results_meet_the_targets_and_the_readme_states_them():
    """benchmarks/c_runtime.json: all 10,000 MNIST test images, as PyTorch from the same file; LeNet-5 small."""
    results = json.loads((ROOT / "benchmarks" / "results" / "c_runtime.json").read_text())
    for name, r in results["models"].items():
        packed = r["packed"]
        assert r["images"] == 10000, name
        assert packed["test_error"] == r["pytorch"]["test_error"], name
        assert packed["same_class"] >= 0.9995 and packed["max_abs_logit_diff"] <= 1e-4, name
    lenet5 = results["models"]["lenet5"]["packed"]["x86_64"]
    assert lenet5["flash_bytes"] <= 32 * 1024 and lenet5["ram_bytes"] <= 48 * 1024
    assert {"lenet5", "lenet300", "tinyres"} <= set(results["models"])
    assert _benchmark().readme_table(results) in (ROOT / "README.md").read_text(), "README table: see c_runtime.py"


@needs_cc
def test_c_runtime_benchmark_smoke_run(tmp_path):
    _mnist_test_images(1)  # skips without cached MNIST
    results = _benchmark().main(["--quick", "--models", "lenet300", "--modes", "packed", "--images", "40",
                                 "--out", str(tmp_path)])  # fmt: skip
    r = results["models"]["lenet300"]
    assert r["images"] == 40 and r["packed"]["same_class"] == 1.0 and r["packed"]["max_abs_logit_diff"] <= 1e-4
    sizes = r["packed"]["x86_64"]
    assert sizes["flash_bytes"] == sizes["text"] + sizes["data"] > r["packed"]["weight_bytes"]
    assert json.loads((tmp_path / "c_runtime.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "c_runtime.png").stat().st_size > 0


def _random_stack(seed: int, one_d: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """A chain of convolutions and poolings of random geometry that still fits a (2, 23[, 21]) input."""
    rng = np.random.default_rng(seed)
    conv, maxp, avgp = (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d) if one_d else (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    shape = (2, 23) if one_d else (2, 23, 21)
    layers, c = [], shape[0]
    for _ in range(2):
        groups = int(rng.choice([1, 2])) if c % 2 == 0 else 1
        out = groups * int(rng.integers(1, 4))
        k, d = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        layers.append(conv(c, out, k, stride=int(rng.integers(1, 3)), padding=int(rng.integers(0, k // 2 + 1)),
                           dilation=d, groups=groups))  # fmt: skip
        layers.append(nn.Tanh())
        if rng.random() < 0.5:
            layers.append(maxp(2, stride=1, padding=1, ceil_mode=bool(rng.random() < 0.5)))
        else:
            layers.append(avgp(3, stride=2, padding=1, ceil_mode=bool(rng.random() < 0.5),
                               count_include_pad=bool(rng.random() < 0.5)))  # fmt: skip
        c = out
    return nn.Sequential(*layers), shape


@needs_cc
@pytest.mark.parametrize("one_d", [False, True])
def test_random_convolution_and_pooling_geometry_matches_pytorch(tmp_path, one_d):
    """Oracle test: strides, paddings, dilations, groups and ceil-mode poolings drawn at random, four models in one
    program each (the outputs concatenated), against PyTorch."""

    class Four(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nets = nn.ModuleList(_random_stack(seed, one_d)[0] for seed in range(4))

        def forward(self, x):
            return torch.cat([net(x).flatten(1) for net in self.nets], 1)

    torch.manual_seed(0)
    shape = _random_stack(0, one_d)[1]
    compressed, model = through_file(Four(), tmp_path, rate=0.3, groups=2)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(run_c(cexport.to_c(model, compressed, x[:1], "net"), tmp_path / "c", x), want,
                               atol=1e-5, rtol=0)  # fmt: skip
