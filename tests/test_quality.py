"""Bounds on what compress() loses: the signal-to-quantization-noise ratio of every compressed
tensor for each code width, on the shared grid of small models (tests/helpers.py)."""

import math

import pytest
import torch
from helpers import small_models

import fisherpack
from fisherpack.fpk.tensors import QuantTensor


def _sqnr_db(w: torch.Tensor, q: torch.Tensor) -> float:
    w, q = w.double(), q.double()
    return 10 * math.log10(float((w**2).sum() / ((w - q) ** 2).sum()))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("kind", sorted(small_models()))
def test_sqnr_of_each_width_is_within_a_few_db_of_6_db_per_bit(kind, bits):
    """Uniform code width b on a power-of-two grid: about 6.02 b dB for weights spread evenly over
    their range (PyTorch's default initialisation of Linear and Conv), less a few dB for the
    power-of-two step and the range the step must cover; Gaussian weights (Embedding's N(0, 1))
    lose about 3 dB more to their tails. Below the bound precision is lost; above it, not b bits."""
    model = small_models()[kind]
    cfg = fisherpack.CompressConfig(criterion="magnitude", allocation="uniform", bits=bits)
    packed = fisherpack.compress(model, None, cfg)
    decoded = packed.state_dict()
    quantized = [n for n, t in packed.tensors.items() if isinstance(t, QuantTensor)]
    assert quantized, "nothing was compressed"
    for name in quantized:
        assert packed.tensors[name].bits == [bits] or set(packed.tensors[name].bits) == {bits}
        db = _sqnr_db(model.state_dict()[name], decoded[name])
        low = 6.02 * bits - (8.0 if kind == "embedding" else 4.5)
        assert low <= db <= 6.02 * bits + 3.0, f"{kind} {name}: {db:.2f} dB at {bits} bits"


@pytest.mark.parametrize("kind", sorted(small_models()))
def test_more_bits_never_lose_more(kind):
    model = small_models()[kind]
    last = {}
    for bits in range(2, 9):
        packed = fisherpack.compress(
            model, None, fisherpack.CompressConfig(criterion="magnitude", allocation="uniform", bits=bits)
        )
        decoded = packed.state_dict()
        for name, t in packed.tensors.items():
            if isinstance(t, QuantTensor):
                db = _sqnr_db(model.state_dict()[name], decoded[name])
                assert db > last.get(name, -math.inf) + 3.0, (name, bits, db)
                last[name] = db
