"""The graph half of the C export: torch.fx nodes -> a list of C kernel calls (cexport.Op).

Each dense layer (Linear, Conv) may absorb what follows it when it is its only reader: a per-channel
affine (a BatchNorm or a constant scale/shift, composed into ``acc * s + t`` after the bias), then
an activation, then (convolutions) a pooling of each output plane. Anything the C runtime cannot
compute raises ConfigError naming the operation and the node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..fpk.tensors import Alias, Compressed

__all__ = ["Buf", "Val", "Op", "Lowering", "error"]

_ACT_FN = {
    torch.relu: "relu",
    F.relu: "relu",
    F.relu6: "relu6",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
}
_ACT_MOD = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
_ACT_METHOD = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_RESHAPE_FN = (torch.flatten, torch.reshape)
_POOL_FN = {F.max_pool1d: "max", F.max_pool2d: "max", F.avg_pool1d: "avg", F.avg_pool2d: "avg"}
_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


@dataclass(eq=False)
class Buf:
    """Storage for activations: ``floats`` in the arena at ``offset`` (or the caller's input)."""

    floats: int
    input: bool = False
    offset: int = -1
    last: int = -1  # index of the last op that reads it


@dataclass(eq=False)
class Val:
    shape: tuple[int, ...]  # without the batch dimension
    buf: Buf

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(eq=False)
class Op:
    """One C kernel call. kind: linear, conv, pool, map, add, affine, softmax."""

    kind: str
    args: list[Val]
    out: Val
    node: str
    p: dict = field(default_factory=dict)
    act: str = "none"


def error(what: str, node: fx.Node, why: str = "is not supported by the C export") -> ConfigError:
    return ConfigError(
        f"cannot export to C: operation {what} (node '{node.name}') {why}; see fisherpack/cexport/graph.py"
    )


def _pair(v, n: int = 2) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


class Lowering:
    def __init__(self, gm: fx.GraphModule, values: dict, compressed: Compressed):
        self.gm, self.values, self.compressed = gm, values, compressed
        self.modules = dict(gm.named_modules())
        self.vals: dict[fx.Node, Val] = {}
        self.ops: list[Op] = []
        self.producer: dict[int, Op] = {}  # id(Val) -> the op that wrote it, while it may still fuse

    def fail(self, node: fx.Node, why: str = "is not supported by the C export") -> ConfigError:
        if node.op == "call_module":
            name = type(self.modules[node.target]).__name__
        else:
            name = getattr(node.target, "__name__", str(node.target))
        return error(f"'{name}'", node, why)

    def new(self, node: fx.Node) -> Val:
        t = self.values[node]
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != 1:
            raise self.fail(node, "does not keep the batch dimension first")
        shape = tuple(int(d) for d in t.shape[1:])
        return Val(shape, Buf(int(np.prod(shape, dtype=np.int64))))

    def const(self, a, node: fx.Node):
        if isinstance(a, fx.Node):
            if a in self.vals:
                raise self.fail(node, "needs a constant operand here")
            return self.values[a]
        return a

    def emit(self, op: Op) -> None:
        self.ops.append(op)
        self.producer = {id(op.out): op}

    def fusable(self, x: Val, node: fx.Node) -> Op | None:
        """The op that wrote ``x``, if ``node`` is the only reader of ``x`` (so never the output)."""
        src = [a for a in node.all_input_nodes if self.vals.get(a) is x]
        if self.producer.get(id(x)) is None or len(src) != 1 or len(src[0].users) != 1:
            return None
        return self.producer[id(x)]

    # ---------------------------------------------------------------- node kinds

    def activation(self, node: fx.Node, x: Val, act: str) -> Val:
        prev = self.fusable(x, node)
        if (
            prev is not None
            and prev.kind in ("linear", "conv", "add", "affine")
            and prev.act == "none"
            and "pool" not in prev.p
        ):
            prev.act = act
            return x
        out = self.new(node)
        self.emit(Op("map", [x], out, node.name, act=act))
        return out

    def affine(self, node: fx.Node, x: Val, mul, add) -> Val:
        prev = self.fusable(x, node)
        if prev is not None and prev.kind in ("linear", "conv") and prev.act == "none" and "pool" not in prev.p:
            m0, a0 = prev.p.get("mul"), prev.p.get("add")
            m = mul if m0 is None else (m0 if mul is None else m0 * mul)
            a = add if a0 is None else a0 * (1 if mul is None else mul) + (0 if add is None else add)
            prev.p.update(
                mul=m if m is not None else np.ones(x.shape[0], np.float32),
                add=a if a is not None else np.zeros(x.shape[0], np.float32),
            )
            return x
        out = self.new(node)
        self.emit(Op("affine", [x], out, node.name, {"mul": mul, "add": add}))
        return out

    def per_channel(self, node: fx.Node, x: Val, c) -> np.ndarray:
        c = torch.as_tensor(c, dtype=torch.float32).detach()
        try:
            full = torch.broadcast_to(c, (1, *x.shape))[0]
        except RuntimeError:
            why = f"has a constant of shape {tuple(c.shape)} that does not fit"
            raise self.fail(node, why) from None
        if c.dim() > len(x.shape) + 1 or len(x.shape) == 0:
            raise self.fail(node, "has a constant that changes the shape")
        rows = full.reshape(x.shape[0], -1)
        if not torch.equal(rows, rows[:, :1].expand_as(rows)):
            raise self.fail(node, "has a constant that varies within a channel")
        return rows[:, 0].numpy().astype(np.float32)

    def weight(self, name: str):
        entry = self.compressed.tensors.get(name)
        if isinstance(entry, Alias):
            entry = self.compressed.tensors[entry.target]
        return entry

    def dense(self, node: fx.Node, mod: nn.Module, x: Val) -> Val:
        out = self.new(node)
        t = node.target
        p = {"weight": (f"{t}.weight", self.weight(f"{t}.weight"), mod.weight.detach().float().numpy())}
        if mod.bias is not None:
            p["bias"] = (f"{t}.bias", self.weight(f"{t}.bias"), mod.bias.detach().float().numpy())
        if isinstance(mod, nn.Linear):
            if not x.shape or x.shape[-1] != mod.in_features:
                raise error("'Linear'", node, f"gets input of shape {x.shape}")
            p.update(rows=x.numel // mod.in_features, inp=mod.in_features, out=mod.out_features)
            self.emit(Op("linear", [x], out, node.name, p))
            return out
        if mod.padding_mode != "zeros":
            raise self.fail(node, f"has padding_mode={mod.padding_mode!r} (only zeros)")
        one = isinstance(mod, nn.Conv1d)
        (c, h, w), (o, oh, ow) = (
            (x.shape, out.shape) if not one else ((x.shape[0], 1, x.shape[1]), (out.shape[0], 1, out.shape[1]))
        )
        k, s, d = (
            ((1, *mod.kernel_size), (1, *mod.stride), (1, *mod.dilation))
            if one
            else (mod.kernel_size, mod.stride, mod.dilation)
        )
        if isinstance(mod.padding, str):  # "same" pads (d*(k-1))//2 before; "valid" nothing
            pad = tuple((dd * (kk - 1)) // 2 if mod.padding == "same" else 0 for kk, dd in zip(k, d))
        else:
            pad = (0, *mod.padding) if one else tuple(mod.padding)
        p["geo"] = (c, h, w, o, oh, ow, *k, *s, *pad, *d, mod.groups)
        self.emit(Op("conv", [x], out, node.name, p))
        return out

    def batchnorm(self, node: fx.Node, mod: nn.Module, x: Val) -> Val:
        if mod.running_mean is None:
            raise self.fail(node, "has no running statistics (track_running_stats=False)")
        inv = 1.0 / np.sqrt(mod.running_var.double().numpy() + mod.eps)
        gamma = mod.weight.detach().double().numpy() if mod.weight is not None else 1.0
        beta = mod.bias.detach().double().numpy() if mod.bias is not None else 0.0
        scale = gamma * inv
        return self.affine(
            node, x, scale.astype(np.float32), (beta - mod.running_mean.double().numpy() * scale).astype(np.float32)
        )

    def pool(self, node: fx.Node, kind: str, x: Val, a: dict) -> Val:
        out = self.new(node)
        if a.get("return_indices") or a.get("divisor_override"):
            raise self.fail(node, "uses return_indices or divisor_override")
        one = len(x.shape) == 2
        k = _pair(a["kernel_size"], 1 if one else 2)
        st = _pair(a.get("stride") or k, len(k))
        pd, dl = _pair(a.get("padding", 0), len(k)), _pair(a.get("dilation", 1), len(k))
        if one:
            k, st, pd, dl = (1, *k), (1, *st), (0, *pd), (1, *dl)
        h, w = (1, x.shape[1]) if one else x.shape[1:]
        oh, ow = (1, out.shape[1]) if one else out.shape[1:]
        geo = (int(kind == "avg"), *k, *st, *pd, *dl, oh, ow, int(a.get("count_include_pad", True)))
        prev = self.fusable(x, node)
        if prev is not None and prev.kind == "conv" and "pool" not in prev.p:
            prev.p["pool"] = geo
            prev.out = out
            self.producer = {id(out): prev}
            return out
        self.emit(Op("pool", [x], out, node.name, {"geo": geo, "chw": (x.shape[0], h, w)}))
        return out

    def binary(self, node: fx.Node, name: str) -> Val:
        a, b = node.args[0], node.args[1]
        if node.kwargs.get("alpha", 1) != 1:
            raise self.fail(node, "uses alpha")
        if isinstance(b, fx.Node) and b in self.vals and not (isinstance(a, fx.Node) and a in self.vals):
            a, b = b, a
        x = self.vals[a]
        if isinstance(b, fx.Node) and b in self.vals:
            y = self.vals[b]
            if name != "add" or y.shape != x.shape:
                raise self.fail(node, f"of two computed tensors ({x.shape}, {y.shape}) is not supported")
            out = self.new(node)
            self.emit(Op("add", [x, y], out, node.name))
            return out
        c = self.per_channel(node, x, self.const(b, node))
        return self.affine(node, x, c, None) if name == "mul" else self.affine(node, x, None, c)

    def concat(self, node: fx.Node) -> Val:
        """``torch.cat`` where each part is one contiguous block of the result (dim 1, or sizes 1 before it)."""
        parts = node.args[0]
        if not all(isinstance(a, fx.Node) and a in self.vals for a in parts):
            raise self.fail(node, "joins a constant; only computed tensors")
        out = self.new(node)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = int(dim) % (len(out.shape) + 1)
        if dim == 0 or int(np.prod(out.shape[: dim - 1])) != 1:
            raise self.fail(node, f"along dim {dim} is not supported (only where each part stays in one piece)")
        self.emit(Op("cat", [self.vals[a] for a in parts], out, node.name))
        return out

    def softmax(self, node: fx.Node, x: Val, dim) -> Val:
        if dim is None:
            raise error("'softmax'", node, "needs an explicit dim")
        dim = int(dim) % (len(x.shape) + 1)
        if dim == 0:
            raise error("'softmax'", node, "over the batch dimension is not supported")
        out = self.new(node)
        shape = x.shape
        outer, inner = int(np.prod(shape[: dim - 1])), int(np.prod(shape[dim:]))
        self.emit(Op("softmax", [x], out, node.name, {"outer": outer, "n": shape[dim - 1], "inner": inner}))
        return out

    def lower(self, node: fx.Node) -> Val:
        target, name = node.target, getattr(node.target, "__name__", str(node.target))
        if target in (operator.add, operator.iadd, torch.add, "add", operator.mul, torch.mul, "mul"):
            return self.binary(node, "add" if "add" in str(name) else "mul")
        if target in (torch.cat, torch.concat):
            return self.concat(node)
        x = self.vals.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if x is None:
            raise self.fail(node, "does not take the computed tensor first")
        if node.op == "call_module":
            mod = self.modules[node.target]
            kind = type(mod)
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                return self.dense(node, mod, x)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return self.batchnorm(node, mod, x)
            if kind in _ACT_MOD:
                return self.activation(node, x, _ACT_MOD[kind])
            if isinstance(mod, nn.GELU):
                return self.activation(node, x, "gelu" if mod.approximate == "none" else "gelu_tanh")
            if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
                return self.pool(node, "max" if "Max" in kind.__name__ else "avg", x, vars(mod))
            if isinstance(mod, nn.Softmax):
                return self.softmax(node, x, mod.dim)
            if isinstance(mod, _IDENTITY):
                return x
            if isinstance(mod, nn.Flatten):
                return Val(self.new(node).shape, x.buf)
            raise self.fail(node)
        if node.op == "call_function" and target in _ACT_FN:
            return self.activation(node, x, _ACT_FN[target])
        if node.op == "call_function" and target is F.gelu:
            return self.activation(node, x, "gelu_tanh" if node.kwargs.get("approximate") == "tanh" else "gelu")
        if node.op == "call_method" and target in _ACT_METHOD:
            return self.activation(node, x, _ACT_METHOD[target])
        if (node.op == "call_function" and target in _RESHAPE_FN) or (
            node.op == "call_method" and target in ("flatten", "view", "reshape", "contiguous")
        ):
            return Val(self.new(node).shape, x.buf)
        if node.op == "call_function" and target is F.dropout:
            if not node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True):
                return x
        if node.op == "call_function" and target in _POOL_FN:
            names = _MAXPOOL_ARGS if _POOL_FN[target] == "max" else _AVGPOOL_ARGS
            return self.pool(node, _POOL_FN[target], x, {**dict(zip(names, node.args)), **node.kwargs})
        if target in (F.softmax, torch.softmax, "softmax"):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return self.softmax(node, x, dim)
        raise self.fail(node)
