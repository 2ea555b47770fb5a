"""Structured Fisher pruning: whole output neurons and filters scored by their Fisher and removed, so
the model that is left is really smaller (and positions of the removed weights cost nothing).

Which channels must go together is found by tracing the model (``torch.fx``) on an example input:

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

A channel's saliency is the group form of OBD, ``sum F * w**2 / 2`` over every weight that goes with
it (producers and consumers). :func:`select` removes the channels of least saliency per parameter
saved, over all spaces at once, until ``rate`` of the structurally prunable weights are gone (every
space keeps at least one channel); :func:`shrink` rebuilds the modules smaller in place, and
:func:`fit` gives a fresh model the shapes of a shrunk state dict, so that a file written from a
shrunk model loads into the model the user builds.
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

__all__ = ["Space", "Cuts", "spaces", "saliency", "select", "shrink", "cut", "fit", "prunable_weights"]
__all__ += ["cut_optimizer", "shrink_step", "removable", "model_size"]

_PASS_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Identity,
                 nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d)  # fmt: skip
_F = nn.functional
_PASS_FUNCTIONS = {torch.relu, _F.relu, _F.gelu, _F.silu, torch.sigmoid, torch.tanh, _F.leaky_relu, _F.elu,
                   _F.max_pool1d, _F.max_pool2d, _F.max_pool3d, _F.avg_pool1d, _F.avg_pool2d, _F.avg_pool3d,
                   _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.dropout, torch.dropout}  # fmt: skip
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
            if isinstance(m, nn.Linear) or (isinstance(m, _CONVS) and m.groups == 1):
                if src is not None:
                    sid, repeat = src
                    dim_ok = isinstance(m, _CONVS) or repeat or len(_shape(args[0]) or ()) == 2
                    if dim_ok and (repeat or uf.get(sid).size == m.weight.shape[1]):
                        uf.get(sid).consumers.append((f"{node.target}.weight", 1, max(repeat, 1)))
                    else:
                        uf.get(sid).fixed = True
                out = uf.new(m.weight.shape[0])
                uf.get(out).members += own
                at[node] = (out, 0)
            elif isinstance(m, _CONVS) and src is not None and not src[1] and _depthwise(m):
                uf.get(src[0]).members += own
                at[node] = src
            elif isinstance(m, _NORMS) and src is not None and not src[1] and m.num_features == uf.get(src[0]).size:
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


def _depthwise(m: nn.Module) -> bool:
    return m.groups == m.in_channels == m.out_channels and m.groups > 1


def _nodes(arg: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def prunable_weights(space: Space, params: dict[str, torch.Tensor]) -> int:
    """Entries that go per channel of ``space`` (its members' and its consumers' slices), times size."""
    per = sum(params[n].numel() // params[n].shape[d] for n, d in space.members if n in params)
    per += sum(params[n].numel() // params[n].shape[d] * r for n, d, r in space.consumers)
    return per * space.size


def _slices(t: torch.Tensor, dim: int, size: int, repeat: int) -> torch.Tensor:
    """(size,) sums over each channel's slice of ``t`` along ``dim`` (``repeat`` indices per channel)."""
    moved = t.movedim(dim, 0).reshape(size, repeat, -1)
    return moved.sum(dim=(1, 2))


def saliency(space: Space, params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    """(size,) float64 OBD saliency of each channel: sum of F * w**2 / 2 over what goes with it.
    Tensors without a Fisher (buffers) count nothing."""
    total = torch.zeros(space.size, dtype=torch.float64)
    for name, dim in space.members:
        if name in fisher and name in params:
            total += _slices((fisher[name] * params[name] ** 2).double() / 2, dim, space.size, 1)
    for name, dim, repeat in space.consumers:
        if name in fisher:
            total += _slices((fisher[name] * params[name] ** 2).double() / 2, dim, space.size, repeat)
    return total


def select(
    found: list[Space], params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], rate: float, floor: int = 1
) -> list[torch.Tensor]:
    """For each space, the sorted indices of the channels to keep: the least salient channels per
    weight saved go first, over all spaces, until ``rate`` of their weights are gone. No space is cut
    below ``floor`` channels (a space of at most ``floor`` keeps all of its own)."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"structured rate must be in [0, 1), got {rate}")
    if floor < 1:
        raise ConfigError(f"structured floor must be >= 1 channel, got {floor}")
    per_channel = [prunable_weights(s, params) // s.size for s in found]
    scores = [saliency(s, params, fisher) / max(p, 1) for s, p in zip(found, per_channel)]
    order = sorted(((float(v), i, c) for i, sc in enumerate(scores) for c, v in enumerate(sc.tolist())))
    goal = rate * sum(p * s.size for p, s in zip(per_channel, found))
    left, removed = [s.size for s in found], [set() for _ in found]
    gone = 0
    for _, i, c in order:
        if gone >= goal:
            break
        if left[i] > floor:
            removed[i].add(c)
            left[i] -= 1
            gone += per_channel[i]
    return [torch.tensor([c for c in range(s.size) if c not in r], dtype=torch.long) for s, r in zip(found, removed)]


def _index(keep: torch.Tensor, repeat: int) -> torch.Tensor:
    return (keep[:, None] * repeat + torch.arange(repeat)[None, :]).reshape(-1) if repeat > 1 else keep


Cuts = dict[str, list[tuple[int, torch.Tensor]]]  # tensor name -> (dim, indices kept along it), in order


@torch.no_grad()
def shrink(model: nn.Module, found: list[Space], keep: list[torch.Tensor]) -> Cuts:
    """Rebuild ``model``'s modules with only the kept channels, in place; returns the cuts made (what
    an optimizer's state or a mask must be cut by too, see :func:`cut`)."""
    cuts: Cuts = {}
    for s, k in zip(found, keep):
        for name, dim in s.members:
            cuts.setdefault(name, []).append((dim, k))
        for name, dim, repeat in s.consumers:
            cuts.setdefault(name, []).append((dim, _index(k, repeat)))
    state = {n: v.detach() for n, v in model.state_dict().items()}
    state.update({name: cut(state[name], steps) for name, steps in cuts.items()})
    fit(model, state)
    model.load_state_dict(state)
    return cuts


def cut(t: torch.Tensor, steps: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``t`` with only the kept indices along each cut dim."""
    for dim, idx in steps:
        t = t.index_select(dim, idx)
    return t


def model_size(model: nn.Module) -> dict[str, int]:
    """What a file made after structured pruning records as its model's size before the first shrink
    (meta ``original``, the base of its ratio): every state-dict value, and 4 bytes per float one."""
    state = list(model.state_dict().values())
    floats = sum(t.numel() for t in state if t.is_floating_point())
    return {"params": sum(t.numel() for t in state), "fp32_bytes": 4 * floats}


def fit(model: nn.Module, shapes: dict[str, Any]) -> list[str]:
    """Give ``model``'s Linear, Conv and BatchNorm modules the shapes of ``shapes`` (a state dict, or
    names to tensors with ``.shape``) where they differ; returns the modules rebuilt. The new modules'
    values are uninitialised: load the state dict next. A module of another type whose shapes differ
    is left alone (loading then names the mismatch)."""
    rebuilt = []
    for path, m in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        w = shapes.get(f"{prefix}weight")
        if w is None or not isinstance(m, (nn.Linear, *_CONVS, *_NORMS)) or tuple(w.shape) == tuple(m.weight.shape):
            continue
        if isinstance(m, nn.Linear):
            out, inp = w.shape
            new = nn.Linear(inp, out, bias=m.bias is not None)
        elif isinstance(m, _CONVS):
            groups = w.shape[0] if _depthwise(m) else m.groups
            new = type(m)(w.shape[1] * groups, w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, groups,
                          m.bias is not None, m.padding_mode)  # fmt: skip
        else:
            new = type(m)(w.shape[0], m.eps, m.momentum, m.affine, m.track_running_stats)
        new.to(dtype=m.weight.dtype, device=m.weight.device).train(m.training)
        _set(model, path, new)
        rebuilt.append(path)
    return rebuilt


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def cut_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, names: list[str], cuts: Cuts):
    """A new optimizer of ``optimizer``'s type and settings over ``model``'s (shrunk) parameters, its
    per-parameter state cut like the parameters. ``names``: the parameter names in the order the
    old optimizer held them (``named_parameters()`` of the model before :func:`shrink`)."""
    state = optimizer.state_dict()
    params = dict(model.named_parameters())
    new = type(optimizer)([params[n] for n in names], **optimizer.defaults)
    index = {p: i for group in state["param_groups"] for i, p in enumerate(group["params"])}
    for i, name in enumerate(names):
        s = state["state"].get(index.get(i, i))
        if s is not None and name in cuts:
            state["state"][index.get(i, i)] = {k: cut(v, cuts[name]) if torch.is_tensor(v) and v.dim() else v
                                               for k, v in s.items()}  # fmt: skip
    new.load_state_dict(state)
    return new


def shrink_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fisher: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor] | None,
    fraction: float,
    before: int,
    example: torch.Tensor,
    floor: int = 1,
) -> tuple[torch.optim.Optimizer, dict[str, torch.Tensor] | None, dict[str, torch.Tensor], int]:
    """One structured round: remove channels until ``fraction`` of ``before`` (the removable weights
    of the original model) are gone, none below ``floor`` channels in a space (see :func:`select`).
    ``model`` shrinks in place; returns the optimizer, masks and Fisher cut to match, and the
    removable weights left."""
    found = spaces(model, example)
    params = {n: p.detach() for n, p in model.named_parameters()}
    now = _touched(found, params)
    rate = max(0.0, 1.0 - (1.0 - fraction) * before / now) if now else 0.0
    if rate <= 0.0:
        return optimizer, masks, fisher, now
    names = list(params)
    cuts = shrink(model, found, select(found, params, fisher, min(rate, 0.999), floor))
    optimizer = cut_optimizer(optimizer, model, names, cuts)
    fisher = {n: cut(f, cuts[n]) if n in cuts else f for n, f in fisher.items()}
    masks = None if masks is None else {n: cut(m, cuts[n]) if n in cuts else m for n, m in masks.items()}
    return optimizer, masks, fisher, removable(model, example)


def removable(model: nn.Module, example: torch.Tensor) -> int:
    """Parameters of ``model`` in tensors that removable channels cut (what a structured fraction
    counts)."""
    return _touched(spaces(model, example), {n: p.detach() for n, p in model.named_parameters()})


def _touched(found: list[Space], params: dict[str, torch.Tensor]) -> int:
    names = {n for s in found for n, _ in s.members} | {n for s in found for n, _, _ in s.consumers}
    return sum(params[n].numel() for n in names if n in params)
