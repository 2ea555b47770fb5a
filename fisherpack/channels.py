"""Which channels of a model must be removed together, found by tracing it (``torch.fx``) on an
example input (used by structured.py):

- a ``Linear`` or ``Conv`` (not grouped) *produces* a channel space (its output channels, weight
  and bias dim 0) and *consumes* its input's (weight dim 1, once per position when the input was
  flattened from a feature map: ``fc1`` after ``x.flatten(1)`` consumes 16 columns per channel of a
  4x4 map);
- BatchNorm, a depthwise conv (groups = channels), activations, pooling and dropout pass a space
  through (their per-channel parameters and buffers go with it);
- ``x + y`` joins the spaces of its operands (a residual block keeps one channel set);
- anything else that touches a space (a reshape, a concatenation, attention, a grouped conv, the
  model's output) makes it *fixed*: its channels are never removed. The rule is conservative: a
  model fisherpack does not understand loses nothing, it just gains nothing structurally.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ConfigError

__all__ = ["Space", "spaces", "depthwise", "CONVS", "NORMS"]

_PASS_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Identity,
                 nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d)  # fmt: skip
_F = nn.functional
_PASS_FUNCTIONS = {torch.relu, _F.relu, _F.gelu, _F.silu, torch.sigmoid, torch.tanh, _F.leaky_relu, _F.elu,
                   _F.max_pool1d, _F.max_pool2d, _F.max_pool3d, _F.avg_pool1d, _F.avg_pool2d, _F.avg_pool3d,
                   _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.dropout, torch.dropout}  # fmt: skip
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Space:
    """Channels that are removed together: ``size`` channels, the tensors that hold them."""

    size: int
    # (qualified tensor name, dim): the channel is one index along dim (weights, biases, norms, buffers)
    members: list[tuple[str, int]] = field(default_factory=list)
    # (qualified weight name, dim, repeat): the channel is ``repeat`` consecutive indices along dim
    consumers: list[tuple[str, int, int]] = field(default_factory=list)
    fixed: bool = False


class _Spaces:
    """Union-find over channel spaces while the graph is walked."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.items: list[Space] = []

    def new(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.items.append(Space(size, fixed=fixed))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def get(self, i: int) -> Space:
        return self.items[self.find(i)]

    def join(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            sa, sb = self.items[a], self.items[b]
            sa.fixed = sa.fixed or sb.fixed or sa.size != sb.size
            sa.members += sb.members
            sa.consumers += sb.consumers
            self.parent[b] = a
        return a


def spaces(model: nn.Module, *example: torch.Tensor) -> list[Space]:
    """The prunable channel spaces of ``model`` (see the module docstring), traced on ``example``.

    ConfigError if the model cannot be traced symbolically (data-dependent control flow)."""
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; the user gets one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"structured pruning needs a model torch.fx can trace ({type(exc).__name__}: {first}); "
                          "use unstructured pruning (structured 0)") from None  # fmt: skip
    ShapeProp(graph).propagate(*example)
    modules = dict(graph.named_modules())
    uf = _Spaces()
    at: dict[fx.Node, tuple[int, int]] = {}  # node -> (space id, repeat per channel when flattened, else 0)

    def fix(arg: Any) -> None:
        for node in _nodes(arg):
            if node in at:
                uf.get(at[node][0]).fixed = True

    for node in graph.graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        src = at.get(args[0]) if args else None
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2:
                at[node] = (uf.new(shape[1], fixed=True), 0)
        elif node.op == "call_module":
            m = modules[node.target]
            own = [(f"{node.target}.{p}", 0) for p in ("weight", "bias") if getattr(m, p, None) is not None]
            if isinstance(m, nn.Linear) or (isinstance(m, CONVS) and m.groups == 1):
                if src is not None:
                    sid, repeat = src
                    dim_ok = isinstance(m, CONVS) or repeat or len(_shape(args[0]) or ()) == 2
                    if dim_ok and (repeat or uf.get(sid).size == m.weight.shape[1]):
                        uf.get(sid).consumers.append((f"{node.target}.weight", 1, max(repeat, 1)))
                    else:
                        uf.get(sid).fixed = True
                out = uf.new(m.weight.shape[0])
                uf.get(out).members += own
                at[node] = (out, 0)
            elif isinstance(m, CONVS) and src is not None and not src[1] and depthwise(m):
                uf.get(src[0]).members += own
                at[node] = src
            elif isinstance(m, NORMS) and src is not None and not src[1] and m.num_features == uf.get(src[0]).size:
                names = [n for n, _ in m.named_parameters()] + [n for n, b in m.named_buffers() if b.dim() == 1]
                uf.get(src[0]).members += [(f"{node.target}.{n}", 0) for n in names]
                at[node] = src
            elif isinstance(m, _PASS_MODULES) and src is not None and not src[1]:
                at[node] = src
            else:
                fix(node.args)
                fix(node.kwargs)
        elif node.op in ("call_function", "call_method"):
            at_node = _through(node, src, at, uf, args)
            if at_node is not None:
                at[node] = at_node
            else:
                fix(node.args)
                fix(node.kwargs)
        elif node.op == "output":
            fix(node.args)
    seen, out = set(), []
    for i in range(len(uf.items)):
        root = uf.find(i)
        if root not in seen:
            seen.add(root)
            s = uf.items[root]
            if not s.fixed and s.consumers and s.members:
                out.append(s)
    return out


def _through(node: fx.Node, src, at, uf: _Spaces, args: list[fx.Node]):  # noqa: ANN001 - internal
    """The space a function or method call passes on, or None if it fixes its inputs."""
    target = node.target
    if node.op == "call_function" and target in _PASS_FUNCTIONS or node.op == "call_method" and target in _PASS_METHODS:
        return src if src is not None and not src[1] and len(args) == 1 else None
    if target in (operator.add, torch.add, operator.iadd) or (node.op == "call_method" and target == "add"):
        if len(args) == 1:  # x + constant
            return src if src is not None and not src[1] else None
        if len(args) == 2 and all(t in at and not at[t][1] for t in args) and _shape(args[0]) == _shape(args[1]):
            return (uf.join(at[args[0]][0], at[args[1]][0]), 0)
        return None
    flatten = target is torch.flatten or (node.op == "call_method" and target == "flatten")
    if flatten and src is not None and not src[1]:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        shape = _shape(args[0])
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if start == 1 and end in (-1, len(shape or ()) - 1) and shape is not None and len(shape) >= 3:
            return (src[0], math.prod(shape[2:]))
    return None


def depthwise(m: nn.Module) -> bool:
    return m.groups == m.in_channels == m.out_channels and m.groups > 1


def _nodes(arg: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
