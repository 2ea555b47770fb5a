"""The optional C decoder (fisherpack/fpk/_native.c) against the Python decoders it stands in for.

- ``rans_v2`` decodes the same symbols as the pure-Python version-2 decoder, for tables of every
  precision and size, short and long streams (its three lookups: a direct table, a coarse table,
  a coarse table whose buckets several entries share);
- the one-pass decode of a tensor (``gaps_codes``) gives the same arrays as the stream-by-stream
  decode, and a damaged file gets the same outcome, the same error message included, from the
  one-pass path, the stream-by-stream C path and the constriction/numpy path.

Skipped when the extension was not built (no C compiler at install time); the other tests then run
the constriction and numpy decoders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fuzzcases import frame, parts, version_of
from test_fast_paths import _decoded_digest
from torch import nn

import fisherpack
from fisherpack import CompressConfig
from fisherpack.errors import FormatError
from fisherpack.fpk import container, decoding, entropy, rans_py
from fisherpack.fpk import gaps as sparse
from fisherpack.fpk.freqs import normalize_counts

native = pytest.importorskip("fisherpack.fpk._native", reason="the C decoder was not built")


def _table(rng, alphabet: int, precision: int, concentration: float):
    counts = np.round(rng.dirichlet(np.full(alphabet, concentration)) * 10**6).astype(np.int64)
    counts[rng.integers(alphabet)] += 1  # at least one symbol occurs
    freqs = normalize_counts(counts, precision)
    present = np.flatnonzero(freqs)
    return present, freqs[present]


@pytest.mark.parametrize(  # every alphabet that fits each precision's slots
    "precision, alphabet", [(p, a) for p in (8, 11, 12, 16) for a in (2, 25, 300, 4096) if a <= 2**p]
)
@pytest.mark.parametrize("count", [1, 40, 5000])
def test_rans_v2_equals_the_python_decoder(precision, alphabet, count):
    rng = np.random.default_rng([precision, alphabet, count])
    for concentration in (0.05, 1.0):
        present, freqs = _table(rng, alphabet, precision, concentration)
        if present.size < 2:
            continue
        idx = rng.choice(present.size, size=count, p=freqs / freqs.sum()).tolist()
        data = np.asarray(rans_py.encode_v2(idx, freqs.tolist(), precision), dtype="<u4").tobytes().rstrip(b"\0")
        out = np.empty(count, dtype=np.uint16)
        assert native.rans_v2(data, freqs.tolist(), present.tolist(), precision, out) == 0
        assert out.tolist() == present[idx].tolist()
        words = np.frombuffer(data + bytes(-len(data) % 4), "<u4").tolist()
        assert rans_py.decode_v2(words, freqs.tolist(), precision, count) == idx


def test_rans_v2_shared_buckets_are_searched():
    """2**16 slots, 1000 entries of one slot each and one big one: at 40 symbols the coarse table has
    2**9 buckets, most of the small entries share one, and the search must find each."""
    precision, rng = 16, np.random.default_rng(3)
    freqs = [2**16 - 1000] + [1] * 1000
    idx = [0, *rng.integers(1, 1001, 39).tolist()]
    data = np.asarray(rans_py.encode_v2(idx, freqs, precision), dtype="<u4").tobytes().rstrip(b"\0")
    symbols = list(range(5, 5 + 1001))
    out = np.empty(len(idx), dtype=np.uint16)
    assert native.rans_v2(data, freqs, symbols, precision, out) == 0
    assert out.tolist() == [symbols[i] for i in idx]


def test_rans_v2_reports_a_failed_final_check_and_refuses_a_bad_table():
    freqs, idx = [3, 5], [0, 1, 1, 0, 1] * 20
    data = np.asarray(rans_py.encode_v2(idx, freqs, 3), dtype="<u4").tobytes().rstrip(b"\0")
    out = np.empty(len(idx), dtype=np.uint16)
    assert native.rans_v2(data, freqs, [0, 1], 3, out) == 0
    bad = bytearray(data)
    bad[5] ^= 0x10
    assert native.rans_v2(bytes(bad), freqs, [0, 1], 3, out) == 1  # the state does not come back to 2**16
    with pytest.raises(FormatError, match="final state check"):
        rans_py.decode_v2(np.frombuffer(bytes(bad) + bytes(-len(bad) % 4), "<u4").tolist(), freqs, 3, len(idx))
    for bad_freqs, bad_symbols in (([3, 4], [0, 1]), ([8], [0]), ([3, 5], [0]), ([0, 8], [0, 1]), ([3, 5], [0, 2**16])):
        with pytest.raises(ValueError):
            native.rans_v2(data, bad_freqs, bad_symbols, 3, out)


@pytest.mark.parametrize("numel, density", [(1, 1.0), (77, 0.3), (5000, 0.05), (5000, 0.9), (300_000, 0.01)])
def test_eg_mask_equals_the_numpy_decoder(numel, density, monkeypatch):
    mask = np.random.default_rng(numel).random(numel) < density
    k, extra = sparse.exp_golomb_split(sparse.mask_to_gaps(mask))
    got = sparse.exp_golomb_mask(k.astype(np.uint16), extra, numel, "m")
    monkeypatch.setattr(sparse, "_native", None)
    assert got.tolist() == sparse.exp_golomb_mask(k.astype(np.uint16), extra, numel, "m").tolist() == mask.tolist()


def _file() -> bytes:
    """A file with two tensors the one-pass decoder takes (gaps_ans masks, one group of rANS codes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 100))
    config = CompressConfig(rate=0.9, criterion="magnitude", allocation="uniform", bits=4)
    return container.encode(fisherpack.compress(model, None, config))


def _outcome(data: bytes) -> str:
    try:
        return _decoded_digest(container.decode(data))
    except FormatError as e:
        return f"FormatError: {e}"


def _paths(monkeypatch, data_list: list[bytes]) -> dict[str, list[str]]:
    """Outcomes of each file by the one-pass path, the stream-by-stream C path and constriction/numpy."""
    out = {}
    with monkeypatch.context() as m:
        out["one pass"] = [_outcome(d) for d in data_list]
        m.setattr(decoding, "_decode_one_pass", lambda *a: None)
        out["c"] = [_outcome(d) for d in data_list]
        m.setattr(entropy, "_native", None)
        m.setattr(sparse, "_native", None)
        out["constriction"] = [_outcome(d) for d in data_list]
    return out


def test_one_pass_decodes_what_the_streams_decode(monkeypatch):
    data = _file()
    calls = []
    real = native.gaps_codes
    monkeypatch.setattr(native, "gaps_codes", lambda *a: calls.append(1) or real(*a))
    outcomes = _paths(monkeypatch, [data])
    assert len(calls) == 2  # both weights took the one-pass path
    assert outcomes["one pass"] == outcomes["c"] == outcomes["constriction"]
    assert not outcomes["one pass"][0].startswith("FormatError")


def _damaged(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    """Payload bytes set to random values or bits flipped (1 to 4 of them), and the payload cut at
    every 41st byte; re-signed, so that they reach the stream decoders past the CRC."""
    zheader, payload = parts(data)
    out = [frame(zheader, payload[:k], version_of(data)) for k in range(0, len(payload), 41)]
    for _ in range(n):
        bad = bytearray(payload)
        for pos in rng.integers(len(bad), size=int(rng.integers(1, 5))):
            bad[pos] = int(rng.integers(256)) if rng.random() < 0.5 else bad[pos] ^ (1 << int(rng.integers(8)))
        out.append(frame(zheader, bytes(bad), version_of(data)))
    return out


def test_damaged_files_fail_the_same_way_on_every_path(monkeypatch):
    data = _file()
    cases = _damaged(data, np.random.default_rng(11), 600)
    outcomes = _paths(monkeypatch, cases)
    assert outcomes["one pass"] == outcomes["c"] == outcomes["constriction"]
    errors = [o for o in outcomes["one pass"] if o.startswith("FormatError")]
    assert len(errors) > 0.5 * len(cases)  # an edit of a code's rANS state may decode to other codes
    assert any("final state check" in e for e in errors) and any("run past the end" in e for e in errors)
