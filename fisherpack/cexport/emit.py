"""The text of ``NAME.h``, ``NAME.c`` and the example program ``NAME_main.c`` from a cexport.Plan.

A compressed weight tensor goes into C in its packed form, one bit string per tensor (MSB first,
as in docs/FORMAT.md "Bit strings"), decoded while computing, never expanded:

- per kept entry, in row-major order: ``[gap][group id][code]``, the gap ``p_i - p_(i-1) - 1``
  (``p_(-1) = -1``) at the width of the largest gap, the group id at ``ceil(log2 groups)`` bits and
  the code at its group's width; or, where it is smaller, the mask as a bitmap (one bit per entry)
  and ``[group id][code]`` per kept entry;
- per group: the width, the step as an exponent (step ``2**exp``) and the grid, so a code ``c`` of
  width ``b`` decodes to ``(c - 2**(b-1)) * 2**exp`` (grid int) or ``(2c + 1 - 2**b) * 2**(exp-1)``
  (grid odd), exactly the value fisherpack decodes in Python (fisherpack.fpk.tensors).

Tensors stored losslessly in the file (and the dense baselines of benchmarks/c_runtime.py) are
float32 arrays (``f32``) or int8 arrays with one float scale (``i8``). The kernels read every weight
through one cursor (``fp_next``) that yields the next kept position and its value.
"""

from __future__ import annotations

import numpy as np

from ..fpk import bits as pack
from ..fpk.tensors import QuantTensor
from .ops import ACTS, kernels

__all__ = ["source", "weight_arrays", "c_float"]


def c_float(x: float) -> str:
    """A float32 as a C literal that reads back to the same float (9 significant digits)."""
    s = f"{float(np.float32(x)):.9g}"
    if s in ("inf", "-inf", "nan"):
        raise ValueError(f"cannot write {s} into C")
    return s + ("" if any(ch in s for ch in ".e") else ".0") + "f"


def c_bytes(data: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    return "{\n    " + ",\n    ".join(rows or ["0"]) + "\n}"


def c_floats(values: np.ndarray) -> str:
    items = [c_float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1)]
    rows = [", ".join(items[i : i + 8]) for i in range(0, len(items), 8)]
    return "{\n    " + ",\n    ".join(rows or ["0.0f"]) + "\n}"


def weight_arrays(cname: str, entry, dense: np.ndarray, mode: str, max_groups: int) -> tuple[list[str], str, int]:
    """(C array definitions, the fp_tensor initializer, bytes of weight data) for one tensor.

    ``entry`` is the file's QuantTensor (or None for a tensor stored losslessly, then ``dense`` is
    used as f32); ``mode`` is "packed" (the file's form), or the baselines "f32" / "i8" of ``dense``.
    """
    fields = {"count": dense.size}
    arrays = []
    if mode == "packed" and isinstance(entry, QuantTensor):
        pos = np.flatnonzero(entry.mask)  # (kept,) row-major positions
        gaps = np.diff(pos, prepend=-1) - 1
        gap_bits = int(gaps.max()).bit_length() if gaps.size else 0
        id_bits = (len(entry.bits) - 1).bit_length()
        bitmap = entry.numel < entry.kept * gap_bits
        widths = np.asarray(entry.bits, dtype=np.int64)[entry.groups]  # (kept,) code widths
        columns = [(entry.groups, np.full(entry.kept, id_bits)), (entry.codes, widths)]
        if not bitmap:
            columns.insert(0, (gaps, np.full(entry.kept, gap_bits)))
        values = np.stack([c[0].astype(np.uint64) for c in columns], axis=1).reshape(-1)
        data = pack.pack_varbits(values, np.stack([c[1] for c in columns], axis=1).reshape(-1))
        arrays.append(f"static const unsigned char {cname}_data[{max(len(data), 1)}] = {c_bytes(data)};")
        fields.update(count=entry.kept, data=f"{cname}_data", gap_bits=gap_bits, id_bits=id_bits)
        nbytes = len(data)
        if bitmap:
            mask = np.packbits(entry.mask).tobytes()
            arrays.append(f"static const unsigned char {cname}_mask[{len(mask)}] = {c_bytes(mask)};")
            fields["bitmap"] = f"{cname}_mask"
            nbytes += len(mask)
        pad = max_groups - len(entry.bits)
        fields["bits"] = "{" + ", ".join(str(b) for b in (*entry.bits, *[1] * pad)) + "}"
        fields["exps"] = "{" + ", ".join(str(e) for e in (*entry.exps, *[0] * pad)) + "}"
        fields["odd"] = "{" + ", ".join(str(int(g == "odd")) for g in (*entry.grids, *["int"] * pad)) + "}"
    elif mode == "i8":
        peak = float(np.abs(dense).max()) if dense.size else 0.0
        scale = np.float32(peak / 127 if peak > 0 else 1.0)
        q = np.clip(np.round(dense / scale), -127, 127).astype(np.int8).reshape(-1)
        body = c_bytes(q.view(np.uint8).tobytes()).replace("0x", "(signed char)0x")
        arrays.append(f"static const signed char {cname}_i8[{max(q.size, 1)}] = {body};")
        fields.update(i8=f"{cname}_i8", i8_scale=c_float(scale))
        nbytes = q.size
    else:
        arrays.append(f"static const float {cname}_f32[{max(dense.size, 1)}] = {c_floats(dense)};")
        fields["f32"] = f"{cname}_f32"
        nbytes = 4 * dense.size
    init = "{" + ", ".join(f".{k} = {v}" for k, v in fields.items()) + "}"
    return arrays, f"static const fp_tensor {cname} = {init};", nbytes


_MAIN = """\
/* Example program for {name}.c: reads float32 inputs ({n_in} floats each, native byte order) from
   stdin until it ends, writes {n_out} float32 outputs per input to stdout, and prints to stderr how
   many inputs it ran and the seconds spent inside {name}_run. */
#include <stdio.h>
#include <time.h>

#include "{name}.h"

int main(void)
{{
    static float in[{up}_INPUT_SIZE];
    float out[{up}_OUTPUT_SIZE];
    long n = 0;
    clock_t spent = 0;
    while (fread(in, sizeof(float), {up}_INPUT_SIZE, stdin) == {up}_INPUT_SIZE) {{
        clock_t start = clock();
        {name}_run(in, out);
        spent += clock() - start;
        if (fwrite(out, sizeof(float), {up}_OUTPUT_SIZE, stdout) != {up}_OUTPUT_SIZE) return 1;
        n++;
    }}
    fprintf(stderr, "%ld inputs, %.6f s in {name}_run\\n", n, (double)spent / CLOCKS_PER_SEC);
    return 0;
}}
"""


def _ptr(v) -> str:
    return "input" if v.buf.input else f"fp_arena + {v.buf.offset}"


class _Emitter:
    def __init__(self, plan, name: str, mode: str):
        self.plan, self.name, self.mode = plan, name, mode
        self.arrays: list[str] = []
        self.weight_bytes = 0
        quant = [op.p[k][1] for op in plan.ops for k in ("weight", "bias") if k in op.p]
        self.max_groups = max([len(q.bits) for q in quant if isinstance(q, QuantTensor)] or [1])

    def tensor(self, cname: str, spec, mode: str) -> str:
        _, entry, dense = spec
        arrays, init, nbytes = weight_arrays(cname, entry, dense, mode, self.max_groups)
        self.arrays += [*arrays, init]
        self.weight_bytes += nbytes
        return f"&{cname}"

    def floats(self, cname: str, values) -> str:
        if values is None:
            return "NULL"
        values = np.asarray(values, dtype=np.float32)
        self.arrays.append(f"static const float {cname}[{values.size}] = {c_floats(values)};")
        self.weight_bytes += 4 * values.size
        return cname

    def struct(self, ctype: str, cname: str, values) -> str:
        self.arrays.append(f"static const {ctype} {cname} = {{{', '.join(str(int(v)) for v in values)}}};")
        return f"&{cname}"

    def call(self, i: int, op) -> str:
        x, y, p, act = _ptr(op.args[0]), _ptr(op.out), op.p, ACTS[op.act]
        if op.kind in ("linear", "conv"):
            w = self.tensor(f"fp_w{i}", p["weight"], self.mode)
            b = self.tensor(f"fp_b{i}", p["bias"], "f32" if self.mode == "i8" else self.mode) if "bias" in p else "NULL"
            mul, add = self.floats(f"fp_mul{i}", p.get("mul")), self.floats(f"fp_add{i}", p.get("add"))
            if op.kind == "linear":
                return f"fp_linear({w}, {b}, {x}, {y}, {p['rows']}, {p['inp']}, {p['out']}, {mul}, {add}, {act});"
            geo = self.struct("fp_convgeo", f"fp_geo{i}", p["geo"])
            pool = self.struct("fp_poolgeo", f"fp_pool{i}", p["pool"]) if "pool" in p else "NULL"
            return f"fp_conv({w}, {b}, {geo}, {x}, {y}, {mul}, {add}, {act}, {pool}, fp_plane);"
        if op.kind == "pool":
            c, h, w = p["chw"]
            return f"fp_pool({x}, {y}, {c}, {h}, {w}, {self.struct('fp_poolgeo', f'fp_pool{i}', p['geo'])});"
        if op.kind == "cat":
            offsets = np.cumsum([0] + [v.numel for v in op.args])
            return "\n    ".join(f"memcpy({y} + {o}, {_ptr(v)}, {v.numel} * sizeof(float));"
                                   for o, v in zip(offsets, op.args))  # fmt: skip
        if op.kind == "map":
            return f"fp_map({x}, {y}, {op.out.numel}, {act});"
        if op.kind == "add":
            return f"fp_add({x}, {_ptr(op.args[1])}, {y}, {op.out.numel}, {act});"
        if op.kind == "affine":
            c = op.out.shape[0]
            mul, add = self.floats(f"fp_mul{i}", p["mul"]), self.floats(f"fp_add{i}", p["add"])
            return f"fp_affine({x}, {y}, {c}, {op.out.numel // c}, {mul}, {add}, {act});"
        return f"fp_softmax({x}, {y}, {p['outer']}, {p['n']}, {p['inner']});"


def _shape(v) -> str:
    return "(" + ", ".join(str(d) for d in v.shape) + ")"


def source(plan, name: str, mode: str) -> dict[str, str]:
    e = _Emitter(plan, name, mode)
    calls = [e.call(i, op) for i, op in enumerate(plan.ops)]
    up = name.upper()
    kinds = {op.kind for op in plan.ops}
    acts = {op.act for op in plan.ops}
    fused = any("pool" in op.p and op.kind == "conv" for op in plan.ops)
    n_in, n_out = plan.input.numel, plan.output.numel
    arena, plane = max(plan.arena, 1), max(plan.plane, 1)
    header = f"""\
/* {name}.h: generated by fisherpack (export --format c). Portable C99; link with -lm.
   {name}_run computes one input (batch 1): input {_shape(plan.input)} and output {_shape(plan.output)}
   float32, row-major. It uses only the static buffers below (no malloc), so it is not re-entrant. */
#ifndef {up}_H
#define {up}_H

#define {up}_INPUT_SIZE {n_in}      /* floats in one input */
#define {up}_OUTPUT_SIZE {n_out}    /* floats in one output */
#define {up}_ARENA_BYTES {4 * arena}    /* static activation buffer in {name}.c */
#define {up}_PLANE_BYTES {4 * plane}    /* static scratch plane in {name}.c (convolution + pooling) */
#define {up}_WEIGHT_BYTES {e.weight_bytes}  /* weight data in {name}.c: streams and per-channel floats */

void {name}_run(const float *input, float *output);

#endif
"""
    body = "\n    ".join(calls)
    code = f"""\
/* {name}.c: generated by fisherpack (export --format c); see {name}.h. Weights are kept in the
   packed form of the .fpk file and decoded while computing (fp_next). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "{name}.h"

#define FP_MAX_GROUPS {e.max_groups}

{kernels(kinds, acts, fused)}
{chr(10).join(e.arrays)}

static float fp_arena[{arena}];
{"static float fp_plane[" + str(plane) + "];" if fused else ""}

void {name}_run(const float *input, float *output)
{{
    {body}
    memcpy(output, {_ptr(plan.output)}, {n_out} * sizeof(float));
}}
"""
    main = _MAIN.format(name=name, up=up, n_in=n_in, n_out=n_out)
    return {f"{name}.h": header, f"{name}.c": code, f"{name}_main.c": main}
