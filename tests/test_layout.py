"""The package's shape: a small public surface with one meaning per name, and layers that import
only downward (README: "How the package is laid out")."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch
from torch import nn

import fisherpack
from fisherpack.fpk import container

PKG = Path(fisherpack.__file__).parent

# lower number = lower layer; a module may import from its own layer or any lower one
METHOD = "compression fisher persample prune ranking quant quant_grid quant_scale losses train plugin runtime export"
METHOD += " cexport dist models data structured channels loading"
LAYERS = {
    "errors": 0,
    "version": 0,
    "fpk": 0,
    "config": 1,
    **dict.fromkeys(METHOD.split(), 2),
    **dict.fromkeys(["pipeline", "schedule", "checkpoint", "defaults", "budget", "oneshot"], 3),
    "bench": 4,
    "cli": 5,
    "__main__": 5,
}


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(PKG)], "fisherpack.")]


def _layer(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "fisherpack", module
    return LAYERS[parts[1]] if len(parts) > 1 else 6  # the package itself: the public API, on top


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported fisherpack module, line) for every import in ``module``'s source, nested ones too."""
    path = Path(importlib.util.find_spec(module).origin)
    if path.suffix != ".py":  # the compiled decoder (fpk/_native.c): it imports nothing of ours
        return []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            if not base.startswith("fisherpack"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if importlib.util.find_spec(base) and _is_module(full):
                    out.append((full, node.lineno))
                else:  # a name from a module (from the top-level package itself: the API, above all)
                    out.append((base, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("fisherpack.")]
    return out


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_every_module_has_a_layer():
    mods = _modules()
    assert len(mods) > 30
    for m in mods:
        _layer(m)


@pytest.mark.parametrize("module", _modules())
def test_no_module_imports_one_above_it(module):
    for target, line in _imports(module):
        assert _layer(target) <= _layer(module), f"{module}:{line} imports {target}, a layer above it"


def test_the_public_namespace_is_small_and_each_name_means_one_thing():
    names = fisherpack.__all__
    assert 18 <= len(names) <= 24 and len(set(names)) == len(names)
    for n in names:
        assert hasattr(fisherpack, n), n
    public = [n for n in dir(fisherpack) if not n.startswith("_")]
    # beyond __all__, only the package's own modules appear (as Python binds every imported submodule)
    for n in set(public) - set(names):
        assert getattr(getattr(fisherpack, n), "__name__", None) == f"fisherpack.{n}", n
    # no module is shadowed by a function of the same name
    for m in pkgutil.iter_modules([str(PKG)]):
        attr = getattr(fisherpack, m.name, None)
        assert attr is None or attr is importlib.import_module(f"fisherpack.{m.name}"), m.name


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_one_save_one_load_and_load_into(tmp_path):
    model = _tiny()
    packed = fisherpack.compress(model, None, fisherpack.CompressConfig(criterion="magnitude", allocation="uniform"))
    n = fisherpack.save(packed, tmp_path / "m.fpk")
    assert n == (tmp_path / "m.fpk").stat().st_size
    back = fisherpack.load(tmp_path / "m.fpk")
    assert isinstance(back, fisherpack.Compressed)
    state = back.state_dict()
    for source in (tmp_path / "m.fpk", str(tmp_path / "m.fpk"), back):
        fresh = fisherpack.load_into(_tiny(), source)
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_the_entropy_setting_of_the_config_is_what_the_file_does(tmp_path):
    model = _tiny()
    cfg = dict(criterion="magnitude", allocation="uniform", rate=0.5, bits=3)
    on = fisherpack.compress(model, None, fisherpack.CompressConfig(**cfg, entropy=True))
    off = fisherpack.compress(model, None, fisherpack.CompressConfig(**cfg, entropy=False))
    size_on, size_off = fisherpack.save(on, tmp_path / "on.fpk"), fisherpack.save(off, tmp_path / "off.fpk")
    streams = container.describe(container.read_bytes(tmp_path / "off.fpk"))["tensors"]
    encodings = {s["encoding"] for t in streams for s in t["streams"]}
    assert encodings and not encodings & {"rans", "zlib"}, encodings
    assert size_off > size_on
    assert fisherpack.load(tmp_path / "off.fpk").meta["config"]["entropy"] is False
    # an explicit choice at save time wins, and the file records what was done
    fisherpack.save(on, tmp_path / "forced.fpk", entropy=False)
    assert (tmp_path / "forced.fpk").read_bytes() == (tmp_path / "off.fpk").read_bytes()
