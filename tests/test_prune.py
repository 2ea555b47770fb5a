import math

import pytest
import torch

from fisherpack import prune
from fisherpack.errors import ConfigError


def _weights():
    w = {"a": torch.tensor([[0.1, -2.0], [0.5, 0.05]]), "b": torch.tensor([3.0, -0.2, 0.01, 1.0])}
    f = {"a": torch.tensor([[10.0, 0.001], [1.0, 100.0]]), "b": torch.tensor([0.01, 5.0, 1.0, 0.1])}
    return w, f


def test_criteria_compute_the_documented_scores():
    w, f = _weights()
    assert torch.equal(prune.scores("magnitude", w)["a"], w["a"].abs().double())
    assert torch.equal(prune.scores("fisher", w, f)["b"], f["b"].double())
    torch.testing.assert_close(prune.scores("obd", w, f)["a"], 0.5 * f["a"].double() * w["a"].double() ** 2)
    r1, r2 = prune.scores("random", w, seed=4), prune.scores("random", w, seed=4)
    assert torch.equal(r1["a"], r2["a"]) and not torch.equal(r1["a"], prune.scores("random", w, seed=5)["a"])


def test_global_magnitude_prunes_the_smallest_over_all_tensors():
    w, _ = _weights()
    masks = prune.select("magnitude", w, None, 0.5)
    # 8 weights, prune 4 smallest |w|: 0.01, 0.05, 0.1, 0.2
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False, False, True]


def test_layer_scope_prunes_each_tensor_to_the_rate():
    w, f = _weights()
    masks = prune.select("fisher", w, f, 0.5, scope="layer")
    assert masks["a"].tolist() == [[True, False], [False, True]]
    assert masks["b"].tolist() == [False, True, True, False]


def test_obd_ranks_by_fisher_times_w_squared():
    w, f = _weights()
    # obd a: .05 .002 .125 .125 ; b: .045 .1 .00005 .05 -> prune 3 lowest: b2, a1, b0
    masks = prune.select("obd", w, f, 3 / 8)
    assert masks["a"].tolist() == [[True, False], [True, True]]
    assert masks["b"].tolist() == [False, True, False, True]


def test_two_stage_prunes_magnitude_first_then_lowest_fisher():
    w, f = _weights()
    masks = prune.select("two_stage", w, f, 0.5, magnitude_share=0.5)
    # stage 1 (magnitude, 25% = 2): 0.01 (b2), 0.05 (a3). stage 2 (fisher, 2 more): b0 (0.01), a1 (0.001)
    assert masks["a"].tolist() == [[True, False], [True, False]]
    assert masks["b"].tolist() == [False, True, False, True]


def test_pruned_weights_stay_pruned_and_count_towards_the_rate():
    w, f = _weights()
    current = {"a": torch.tensor([[True, True], [True, True]]), "b": torch.tensor([False, True, True, True])}
    masks = prune.select("magnitude", w, None, 0.25, current=current)
    assert not masks["b"][0]  # stays pruned although it is the largest weight
    assert sum(int((~m).sum()) for m in masks.values()) == 2


def test_ties_break_by_position_deterministically():
    w = {"a": torch.ones(6)}
    assert prune.select("magnitude", w, None, 0.5)["a"].tolist() == [False, False, False, True, True, True]


def test_schedule_prunes_a_constant_fraction_of_survivors():
    rates = prune.schedule(0.99, 4)
    assert len(rates) == 4 and math.isclose(rates[-1], 0.99)
    survivors = [1 - r for r in [0.0, *rates]]
    ratios = [survivors[i + 1] / survivors[i] for i in range(4)]
    assert all(math.isclose(r, ratios[0]) for r in ratios)


def test_apply_masks_zeroes_in_place():
    model = torch.nn.Linear(2, 2, bias=False)
    mask = torch.tensor([[True, False], [False, True]])
    prune.apply_masks(model, {"weight": mask})
    assert torch.all(model.weight[~mask] == 0) and torch.all(model.weight[mask] != 0)
    assert prune.sparsity({"weight": mask}) == 0.5


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_impossible_rates_are_config_errors(rate):
    w, _ = _weights()
    with pytest.raises(ConfigError, match="rate must be in"):
        prune.select("magnitude", w, None, rate)


def test_bad_criterion_and_missing_fisher_are_config_errors():
    w, f = _weights()
    with pytest.raises(ConfigError, match="unknown pruning criterion"):
        prune.select("biggest", w, f, 0.5)
    with pytest.raises(ConfigError, match="needs a Fisher"):
        prune.select("obd", w, None, 0.5)
    with pytest.raises(ConfigError, match="NaN or Inf"):
        prune.select("fisher", w, {"a": f["a"] * float("nan"), "b": f["b"]}, 0.5)
