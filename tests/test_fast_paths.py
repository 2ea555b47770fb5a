"""Oracle tests for the fast paths of issue 12's speed work: each equals a plain reference bit for bit.

- mask decoding (gaps.exp_golomb_join, gaps_to_mask, exp_golomb_mask) against per-value Python,
  unpack_bits (bit columns up to 8 bits, windows above) against a bit string, and the committed
  reference files against the arrays they decoded to before the fast paths;
- the scores prune computes chunk by chunk against prune.scores, and the chunked ranking against
  a stable sort, across chunk boundaries;
- the quantizer's error tables against the ldexp formulas they replaced;
- dequantize_codes' table lookup against the formula.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fisherpack import prune, quant_grid, ranking
from fisherpack.errors import ConfigError, FormatError
from fisherpack.fpk import bits, container
from fisherpack.fpk import gaps as sparse
from fisherpack.fpk import tensors as fpt

DATA = Path(__file__).resolve().parent / "data"


def _join_reference(k: list[int], extra: bytes) -> list[int]:
    stream, pos, out = "".join(f"{b:08b}" for b in extra), 0, []
    for kk in k:
        low = max(kk - 1, 0)
        rest = int(stream[pos : pos + low], 2) if low else 0
        out.append(0 if kk == 0 else (1 << low) + rest)
        pos += low
    return out


@pytest.mark.parametrize("top", [3, 20, 57, 58, 63])  # 58 and up: the varbits path
@pytest.mark.parametrize("dtype", [np.uint16, np.int64])
def test_exp_golomb_join_equals_the_bit_by_bit_reference(top, dtype):
    rng = np.random.default_rng(top)
    n = 3000
    k = rng.integers(0, top + 1, n)
    k[:5] = [0, 1, 2, top, 0]
    values = np.array([0 if b == 0 else (1 << (b - 1)) + int(rng.integers(0, 1 << max(b - 1, 0))) for b in k.tolist()],
                      dtype=np.uint64)  # fmt: skip
    got_k, extra = sparse.exp_golomb_split(values)
    assert got_k.tolist() == k.tolist()
    joined = sparse.exp_golomb_join(k.astype(dtype), extra, "m")
    assert joined.dtype == np.uint64 and joined.tolist() == _join_reference(k.tolist(), extra) == values.tolist()


def test_exp_golomb_join_over_several_chunks(monkeypatch):
    monkeypatch.setattr(bits, "_CHUNK", 8)  # chunks of 8 values: every boundary and offset is crossed
    rng = np.random.default_rng(1)
    values = rng.geometric(0.05, 1000).astype(np.uint64) - np.uint64(1)
    k, extra = sparse.exp_golomb_split(values)
    assert sparse.exp_golomb_join(k.astype(np.uint16), extra, "m").tolist() == values.tolist()


def test_exp_golomb_join_rejects_what_does_not_fit():
    with pytest.raises(FormatError, match="bucket out of range"):
        sparse.exp_golomb_join(np.array([64], dtype=np.uint16), b"", "m")
    with pytest.raises(FormatError, match="bucket out of range"):
        sparse.exp_golomb_join(np.array([-1]), b"", "m")
    k, extra = sparse.exp_golomb_split(np.array([5, 9], dtype=np.uint64))
    for bad in (extra + b"\x00", extra[:-1]):
        with pytest.raises(FormatError, match="stream is"):
            sparse.exp_golomb_join(k, bad, "m")


@pytest.mark.parametrize("chunk", [8, 1 << 16])
def test_exp_golomb_mask_equals_join_then_gaps_to_mask(chunk, monkeypatch):
    monkeypatch.setattr(bits, "_CHUNK", chunk)
    rng = np.random.default_rng(7)
    for numel, density in ((1, 1.0), (77, 0.3), (5000, 0.05), (5000, 0.9)):
        mask = rng.random(numel) < density
        k, extra = sparse.exp_golomb_split(sparse.mask_to_gaps(mask))
        got = sparse.exp_golomb_mask(k.astype(np.uint16), extra, numel, "m")
        assert got.dtype == bool and got.tolist() == mask.tolist()
    k, extra = sparse.exp_golomb_split(np.array([3, 0, 9, 1] * 5, dtype=np.uint64))  # kept 3, 4, 14, 16, 20, ..., 84
    for numel in (k.size, 84, 85):  # the last one fits exactly
        try:
            want = sparse.gaps_to_mask(sparse.exp_golomb_join(k, extra, "m mask extra bits"), numel, "m")
        except FormatError as exc:
            with pytest.raises(FormatError, match=f"^{exc}$"):
                sparse.exp_golomb_mask(k, extra, numel, "m")
        else:
            assert sparse.exp_golomb_mask(k, extra, numel, "m").tolist() == want.tolist() and numel == 85
    for bad_k, bad_extra, message in (([64], b"", "bucket out of range"), ([5], b"", "stream is 0 bytes"),
                                      ([9], b"\x00", "run past the end")):  # fmt: skip
        with pytest.raises(FormatError, match=message):
            sparse.exp_golomb_mask(np.array(bad_k, dtype=np.uint16), bad_extra, 100, "m")


def _decoded_digest(c: fpt.Compressed) -> str:
    h = hashlib.sha256()
    for name, t in c.tensors.items():
        h.update(name.encode())
        if isinstance(t, fpt.QuantTensor):
            h.update(repr((t.shape, t.bits, t.exps, t.grids)).encode())
            for a in (np.packbits(t.mask), t.groups.astype("u1"), t.codes.astype("<u2")):
                h.update(a.tobytes())
        elif isinstance(t, fpt.RawTensor):
            h.update(str(t.tensor.dtype).encode() + t.tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(t.target.encode())
    return h.hexdigest()


@pytest.mark.parametrize(
    "name, digest",
    [
        ("lenet5-v2.fpk", "aa9bee3a0ebfecd2a27f7110a7444034ecdbda096467c46f03f4eb862ddb212e"),
        ("lenet300-v2.fpk", "11f62bae6cddf1e13ef24c19c9cac8f5be828a9e9833cdd0ae7182993c6c6648"),
    ],
)
def test_committed_files_decode_to_the_arrays_of_the_reference_decoder(name, digest):
    """Digests of masks, group ids, codes and raw tensors as fisherpack 071c329 decoded them (the
    reference files of that commit, kept in tests/data)."""
    assert _decoded_digest(container.load(DATA / name)) == digest


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.uint16])
def test_gaps_to_mask_equals_the_reference_and_refuses_overruns(dtype):
    rng = np.random.default_rng(2)
    for numel in (1, 7, 500):
        mask = rng.random(numel) < 0.3
        gaps = sparse.mask_to_gaps(mask).astype(dtype)
        got = sparse.gaps_to_mask(gaps, numel, "m")
        assert got.shape == (numel,) and got.dtype == bool and got.tolist() == mask.tolist()
    huge = np.iinfo(dtype).max
    for bad in ([0, 0, 5], [4], [huge], [huge, huge, huge], [2**62, 2**62, 2**62][: 3 if huge > 2**62 else 0]):
        if bad:
            with pytest.raises(FormatError, match="run past the end"):
                sparse.gaps_to_mask(np.array(bad, dtype=dtype), 4, "m")
    if dtype == np.int64:
        with pytest.raises(FormatError, match="run past the end"):
            sparse.gaps_to_mask(np.array([1, -1]), 4, "m")


@pytest.mark.parametrize("chunk", [8, 1 << 16])  # 8: values of one width cross chunks at every offset
def test_unpack_bits_every_width_and_offset(chunk, monkeypatch):
    monkeypatch.setattr(bits, "_CHUNK", chunk)
    rng = np.random.default_rng(3)
    for width in range(1, 33):
        values = rng.integers(0, 1 << width, 37, dtype=np.uint64)
        data = bits.pack_bits(values, width)
        assert bits.unpack_bits(data, width, 37).tolist() == values.tolist()
        shifted = bytes([0xA5]) + data  # a leading byte, read from bit 8 and from odd offsets
        assert bits.unpack_bits(shifted, width, 37, offset_bits=8).tolist() == values.tolist()
        string = "".join(f"{b:08b}" for b in data)
        for offset in (1, 5):
            padded = "1" * offset + string
            padded += "0" * (-len(padded) % 8)
            raw = int(padded, 2).to_bytes(len(padded) // 8, "big")
            assert bits.unpack_bits(raw, width, 37, offset_bits=offset).tolist() == values.tolist()


def _weights(dtype: torch.dtype) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(4)
    w = {"a": torch.randn(300, 7, generator=gen).to(dtype), "b": torch.randn(1001, generator=gen).to(dtype)}
    w["a"][0, :3] = 0.0
    w["b"][5] = -0.0
    f = {n: torch.rand(t.shape, generator=gen).to(dtype) ** 4 for n, t in w.items()}
    f["a"][1, :] = torch.finfo(dtype).tiny / 2  # subnormal in the source dtype: scaled exactly in float64
    f["b"][:4] = 0.0
    return w, f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("criterion", ["magnitude", "fisher", "obd"])
def test_chunked_scores_equal_the_whole_tensor_scores(criterion, dtype, monkeypatch):
    monkeypatch.setattr(ranking, "CHUNK", 64)
    w, f = _weights(dtype)
    lazy = prune._LazyScores(criterion, w, f)
    want = prune.scores(criterion, w, f)
    for n in w:
        got = np.concatenate([c.copy() for c in lazy.chunks(n)])
        assert got.tobytes() == want[n].flatten().numpy().tobytes(), (criterion, dtype, n)


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
def test_chunked_ranking_equals_the_stable_sort(chunk, monkeypatch):
    monkeypatch.setattr(ranking, "CHUNK", chunk)
    monkeypatch.setattr(ranking, "_FEW", 3)  # forces the refining passes too
    w, f = _weights(torch.float32)
    current = {n: t != 0 for n, t in w.items()}
    for criterion in ("magnitude", "obd"):
        for rate in (0.01, 0.5, 0.93):
            got = prune.select(criterion, w, f, rate, current=current)
            flat = torch.cat([s.flatten() for s in prune.scores(criterion, w, f).values()])
            flat = torch.where(torch.cat([c.flatten() for c in current.values()]), flat, -math.inf)
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[torch.sort(flat, stable=True).indices[: round(rate * flat.numel())]] = False
            assert torch.equal(torch.cat([m.flatten() for m in got.values()]), keep), (criterion, rate)


def test_nan_scores_and_bad_fisher_are_still_refused():
    w, f = _weights(torch.float32)
    w["b"][7] = math.inf  # obd: F * inf**2 is inf, or NaN where F is 0
    f["b"][7] = 0.0
    with pytest.raises(ConfigError, match="contain NaN"):
        prune.select("obd", w, f, 0.5)
    w, f = _weights(torch.float32)
    f["a"][2, 2] = math.nan
    with pytest.raises(ConfigError, match="NaN or Inf"):
        prune.select("fisher", w, f, 0.5)
    assert prune.value_range(torch.tensor([1.0, math.nan]))[0] != prune.value_range(torch.tensor([1.0, math.nan]))[0]
    assert prune.value_range(torch.zeros(0)) == (0.0, 0.0)
    assert prune.value_range(torch.tensor([True, False])) == (0.0, 1.0)


def _error_reference(w, weight, b, exp, grid):
    """The error as quant computed it before: levels by np.ldexp, np.clip, a fresh array each."""
    scaled = np.ldexp(w, -exp)
    if grid == "int":
        half = 1 << (b - 1)
        levels = np.ldexp(np.clip(np.rint(scaled), -half, half - 1), exp)
    else:
        code = np.clip(np.floor(scaled + (1 << (b - 1))), 0, (1 << b) - 1)
        levels = np.ldexp(2 * code + (1 - (1 << b)), exp - 1)
    err_sq = (w - levels) ** 2
    return float(err_sq.sum() if weight is None else (weight * err_sq).sum())


def test_error_tables_equal_the_ldexp_formulas_bit_for_bit():
    rng = np.random.default_rng(5)
    w = np.concatenate([rng.standard_t(3, 2000) * 0.03, [1e-30, -1e-30, 0.0, -3e-8]]).astype(np.float32)
    w = w.astype(np.float64)
    weight = rng.lognormal(0, 2, w.size)
    buf = np.empty_like(w)
    for b in (1, 2, 4, 7, 12, 16):
        for exp in (-64, -30, -9, -4, 0, 5, 64):
            for grid in ("int", "odd"):
                for f in (None, weight):
                    assert quant_grid.error(w, f, b, exp, grid, buf) == _error_reference(w, f, b, exp, grid)


@pytest.mark.parametrize("grid", ["int", "odd"])
def test_dequantize_table_equals_the_formula(grid):
    rng = np.random.default_rng(6)
    for b in (1, 3, 8, 16):
        for exp in (-64, -7, 0, 64):
            codes = rng.integers(0, 1 << b, 5000).astype(np.uint16)
            for c in (codes, codes[:1]):  # the table and the direct formula
                assert fpt.dequantize_codes(c, b, exp, grid).tobytes() == fpt._dequantize(c, b, exp, grid).tobytes()
