import itertools

import numpy as np
import pytest
import torch

from fisherpack import quant, quant_grid, quant_scale
from fisherpack.errors import ConfigError
from fisherpack.fpk.tensors import dequantize_codes


def _brute_force(w, weight, bits):
    """Reference: try every grid, exponent and code for every weight."""
    best = None
    for grid, exp in itertools.product(("int", "odd"), range(-12, 4)):
        levels = dequantize_codes(np.arange(1 << bits), bits, exp, grid).astype(np.float64)
        q = np.empty_like(w)
        for i, v in enumerate(w):
            q[i] = levels[np.argmin(np.abs(levels - v))]
        err = float((weight * (w - q) ** 2).sum())
        if best is None or err < best - 1e-15:
            best = err
    return best


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_group_quantizer_finds_the_best_grid_and_step(bits):
    rng = np.random.default_rng(bits)
    w = rng.laplace(0, 0.05, 40)
    weight = rng.uniform(0.1, 2.0, 40)
    codes, exp, grid, err = quant.quantize_group(w, weight, bits)
    values = dequantize_codes(codes, bits, exp, grid).astype(np.float64)
    assert err == pytest.approx(float((weight * (w - values) ** 2).sum()), rel=1e-12)
    assert err == pytest.approx(_brute_force(w, weight, bits), rel=1e-9)


def test_codes_round_to_nearest_level_and_saturate():
    w = np.array([0.0, 0.24, 0.26, -0.26, 5.0, -5.0])
    codes = quant_grid.codes_of(w, 3, -1, "int")  # levels -2.0 .. 1.5 in steps of 0.5
    assert dequantize_codes(codes, 3, -1, "int").tolist() == [0.0, 0.0, 0.5, -0.5, 1.5, -2.0]
    codes = quant_grid.codes_of(w, 2, 0, "odd")  # levels -1.5 -0.5 0.5 1.5
    assert dequantize_codes(codes, 2, 0, "odd").tolist() == [0.5, 0.5, 0.5, -0.5, 1.5, -1.5]


def test_waterfill_meets_the_budget_and_gives_more_bits_to_higher_fisher():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, 3000)
    tables = [quant.group_error_table(w[i::3], np.full(1000, f)) for i, f in enumerate([256.0, 16.0, 1.0])]
    widths = quant.allocate_waterfill(tables, [1000] * 3, 6.0)
    assert 17 <= sum(widths) <= 18
    # reverse water-filling: each factor 16 in Fisher is worth log2(16)/2 = 2 bits: about 8, 6, 4
    assert 1 <= widths[0] - widths[1] <= 3 and 1 <= widths[1] - widths[2] <= 3


def test_waterfill_is_optimal_on_small_cases():
    rng = np.random.default_rng(1)
    groups = [rng.normal(0, s, n) for s, n in [(1.0, 50), (0.1, 30), (3.0, 20)]]
    fish = [np.full(g.size, f) for g, f in zip(groups, [1.0, 50.0, 0.2])]
    tables = [quant.group_error_table(g, f, max_bits=8) for g, f in zip(groups, fish)]
    sizes = [g.size for g in groups]
    widths = quant.allocate_waterfill(tables, sizes, 3.0)
    best = min(
        sum(t[b] for t, b in zip(tables, combo))
        for combo in itertools.product(range(1, 9), repeat=3)
        if sum(s * b for s, b in zip(sizes, combo)) <= 300
    )
    got = sum(t[b] for t, b in zip(tables, widths))
    assert got <= best * 1.05


def test_quantize_uniform_quantile_and_waterfill_produce_valid_tensors():
    torch.manual_seed(0)
    weights = {"a": torch.randn(20, 30), "b": torch.randn(50)}
    masks = {"a": torch.rand(20, 30) > 0.5, "b": torch.ones(50, dtype=torch.bool)}
    fisher = {"a": torch.rand(20, 30), "b": torch.rand(50) * 100}
    uni = quant.quantize(weights, masks, None, allocation="uniform", bits=4)
    assert uni["a"].bits == (4,) and uni["b"].bits == (4,)
    paper = quant.quantize(weights, masks, fisher, allocation="quantile", group_bits=(6, 3))
    # global Fisher ranking: b's Fisher is ~100x larger, so b gets (almost) only the 6-bit group
    assert 6 in paper["b"].bits and paper["b"].group_counts()[paper["b"].bits.index(6)] >= 45
    wf = quant.quantize(weights, masks, fisher, allocation="waterfill", bits=4, groups=3)
    kept = sum(q.kept for q in wf.values())
    code_bits = sum(int((q.group_counts() * np.array(q.bits)).sum()) for q in wf.values())
    assert code_bits <= 4 * kept
    for name, q in wf.items():
        dense = q.dequantize()
        assert torch.all(dense[~masks[name]] == 0)
        err = (dense - weights[name])[masks[name]].abs().max()
        assert err < weights[name].abs().max()


def test_bad_inputs_are_config_errors():
    w, m = {"a": torch.randn(4)}, {"a": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ConfigError, match="needs a Fisher"):
        quant.quantize(w, m, None, allocation="waterfill")
    with pytest.raises(ConfigError, match="whole bit width"):
        quant.quantize(w, m, None, allocation="uniform", bits=3.5)
    with pytest.raises(ConfigError, match="NaN or Inf"):
        quant.quantize({"a": torch.tensor([1.0, float("nan"), 0.0, 1.0])}, m, None, allocation="uniform", bits=4)
    with pytest.raises(ConfigError, match="bit width must be in"):
        quant.quantize_group(np.ones(3), None, 0)


def test_fake_quant_forward_equals_the_stored_values_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    w = torch.randn(30, 20)
    masks = {"w": torch.rand(30, 20) > 0.3}
    qt = quant.quantize({"w": w}, masks, {"w": torch.rand(30, 20)}, bits=3, groups=3)["w"]
    fq = quant.FakeQuant(qt)
    latent = (w + 0.01 * torch.randn(30, 20)).requires_grad_()
    out = fq(latent)
    stored = quant.requantize(qt, latent).dequantize()
    assert torch.equal(out.detach(), stored)
    (out * torch.arange(600.0).view(30, 20)).sum().backward()
    expected = torch.arange(600.0).view(30, 20) * masks["w"]
    assert torch.equal(latent.grad, expected)
    again = quant.requantize(qt, w)
    assert np.array_equal(again.codes, qt.codes)  # the layout reproduces the original codes


def test_split_ranks_equals_groups_along_a_stable_sort():
    """Equal-count Fisher groups by selection give exactly the groups of the stable argsort."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(0, 60))
        key = rng.integers(0, 4, n).astype(np.float32) * (rng.random() < 0.5) + rng.random(n).astype(np.float32) * (
            trial % 3 == 0
        )
        key[rng.random(n) < 0.1] = -0.0
        g = int(rng.integers(1, 7))
        want = np.empty(n, dtype=np.uint8)
        want[np.argsort(key, kind="stable")] = (np.arange(n) * g // max(n, 1)).astype(np.uint8)
        np.testing.assert_array_equal(quant_scale.split_ranks(key, g), want)


def test_large_groups_choose_on_a_sample_and_code_everything():
    """A group above its sample size: step and grid chosen on the sample, codes for all entries
    exactly as quantize_group would give at that step and grid; a group within it is unchanged.
    The LeNets' few groups all get shares above their sizes."""
    assert quant_scale.sample_size(10) >= 800_000 and quant_scale.sample_size(10_000) == 1 << 16
    rng = np.random.default_rng(1)
    w = rng.standard_t(3, 5000) * 0.01
    f = rng.lognormal(0, 1, 5000)
    small_codes, small_exp, small_grid, _ = quant.quantize_group(w, f, 4)
    codes, exp, grid = quant_scale.quantize_large(quant.quantize_group, quant_grid.codes_of, w, f, 4, 1000)
    top = np.argmax(np.abs(w))
    assert (exp, grid) == quant.quantize_group(np.append(w[::5], w[top]), np.append(f[::5], f[top]), 4)[1:3]
    np.testing.assert_array_equal(codes, quant_grid.codes_of(w, 4, exp, grid))
    assert abs(exp - small_exp) <= 1  # the sample's choice is near the full one
    np.testing.assert_array_equal(
        quant_scale.quantize_large(quant.quantize_group, quant_grid.codes_of, w, f, 4, 5000)[0], small_codes
    )


@pytest.mark.parametrize("grid", ["int", "odd"])
def test_levels_equal_the_dequantized_codes(grid):
    """quantize_group scores candidates by their levels directly; they must equal dequantized codes."""
    rng = np.random.default_rng(2)
    w = rng.standard_t(3, 3000) * 0.05
    for bits in (1, 2, 4, 8, 12, 16):
        for exp in (-20, -9, -4, 0, 3):
            want = dequantize_codes(quant_grid.codes_of(w, bits, exp, grid), bits, exp, grid).astype(np.float64)
            np.testing.assert_array_equal(quant_grid.levels(w, bits, exp, grid), want)
