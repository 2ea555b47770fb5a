"""``fisherpack export --format c``: the model of a .fpk file as portable C99 that runs the packed weights.

:func:`to_c` captures the model's graph with torch.fx (traced once on one example input, batch 1),
lowers it to a short list of C kernel calls (graph.py) and returns three files
(emit.py): ``NAME.h`` with one function, ``void NAME_run(const float *input, float
*output)``, and the sizes of its buffers; ``NAME.c`` with the kernels (ops.py) and the
weights in the file's packed form, decoded while computing; ``NAME_main.c``, an example program. No
malloc: activations live in one static arena whose size is planned here (buffers reused once dead;
elementwise ops work in place), plus one static plane for a convolution whose pooling is fused. Only
libc and libm are used. Not re-entrant (static buffers).

Supported nodes: Linear, Conv1d/Conv2d (stride, padding incl. "same", dilation, groups), ReLU, ReLU6,
tanh, sigmoid, GELU (erf and tanh forms), max and average pooling 1d/2d, flatten/view/reshape,
residual add, softmax, BatchNorm1d/2d (folded into the preceding Linear/Conv as a per-channel
``y = acc * s + t`` after the bias, so the packed weights stay as they are; elsewhere a per-channel
affine op), multiplying or adding a per-channel constant, concatenation along channels, dropout and
identity (eval mode). Sizes (``x.size(0)``) are constants of the batch-1 trace. Any
other node raises ConfigError naming the operation and the node.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..errors import ConfigError
from ..fpk.tensors import Compressed
from .graph import Buf, Lowering, Op, Val, error

__all__ = ["to_c", "Plan", "plan"]


@dataclass
class Plan:
    ops: list[Op]
    input: Val
    output: Val
    arena: int = 0  # floats
    plane: int = 0  # floats


def _capture(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, dict]:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise ConfigError(f"cannot export to C: torch.fx cannot trace the model: {str(exc).splitlines()[0]}") from None
    values: dict = {}

    class _Record(fx.Interpreter):
        def run_node(self, n):
            values[n] = result = super().run_node(n)
            return result

    with torch.no_grad():
        _Record(gm).run(example)
    return gm, values


def _is_shape(node: fx.Node, shapes: set) -> bool:
    """``x.size(...)``, ``x.dim()``, ``x.shape`` and items of them."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "ndim")
    return node.op == "call_function" and node.target is operator.getitem and node.args[0] in shapes


def plan(model: nn.Module, compressed: Compressed, example: torch.Tensor) -> Plan:
    """The ops and the arena layout for ``model`` (holding the file's weights) at batch 1."""
    model = model.eval()
    gm, values = _capture(model, example[:1])
    low = Lowering(gm, values, compressed)
    inp = out = None
    shapes: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if inp is not None:
                raise error("'input'", node, "is a second input; the C export takes one")
            inp = low.vals[node] = low.new(node)
            inp.buf.input = True
        elif node.op == "output":
            res = node.args[0]
            if not isinstance(res, fx.Node) or res not in low.vals:
                raise error("'output'", node, "must be one computed tensor")
            out = low.vals[res]
        elif _is_shape(node, shapes):
            shapes.add(node)  # a size of a computed tensor: a constant at batch 1
        elif any(a in low.vals for a in node.all_input_nodes):
            low.vals[node] = low.lower(node)
    result = Plan(low.ops, inp, out)
    _allocate(result)
    return result


def _allocate(p: Plan) -> None:
    """First-fit offsets in one arena; an elementwise op writes over an input that dies with it."""
    for i, op in enumerate(p.ops):
        for v in op.args:
            v.buf.last = max(v.buf.last, i)
    p.output.buf.last = len(p.ops)
    live: list[Buf] = []
    for i, op in enumerate(p.ops):
        live = [b for b in live if b.last >= i]
        buf = op.out.buf
        reuse = [v.buf for v in op.args if v.buf.last == i and not v.buf.input and v.buf.floats == buf.floats]
        if op.kind in ("map", "add", "affine", "softmax") and reuse:
            buf.offset = reuse[0].offset
            live.remove(reuse[0])
        else:
            offset = 0
            for b in sorted(live, key=lambda b: b.offset):
                if b.offset - offset >= buf.floats:
                    break
                offset = max(offset, b.offset + b.floats)
            buf.offset = offset
        live.append(buf)
        p.arena = max(p.arena, buf.offset + buf.floats)
        if "pool" in op.p:
            p.plane = max(p.plane, op.p["geo"][4] * op.p["geo"][5])


def to_c(
    model: nn.Module, compressed: Compressed, example: torch.Tensor, name: str, weights: str = "packed"
) -> dict[str, str]:
    """{"NAME.h": text, "NAME.c": text}. ``weights``: "packed" (the file's form), or the dense
    baselines "f32" / "i8" (int8 with one scale per tensor) that benchmarks/c_runtime.py compares."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,30}", name):
        raise ConfigError(f"the C name must be an identifier like lenet5, got {name!r}")
    from .emit import source

    return source(plan(model, compressed, example), name, weights)
