import math

import pytest
import torch

from fisherpack import prune, ranking
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


def _sorted_reference(score: dict, rate: float, current: dict | None) -> dict:
    """The ranking as it was: concatenate, stable sort, prune the first round(rate * N)."""
    flat = []
    for n, s in score.items():
        s = s.double().flatten()
        if current is not None:
            s = torch.where(current[n].flatten(), s, torch.full_like(s, -math.inf))
        flat.append(s)
    cat = torch.cat(flat)
    keep = torch.ones(cat.numel(), dtype=torch.bool)
    keep[torch.sort(cat, stable=True).indices[: int(round(rate * cat.numel()))]] = False
    out, start = {}, 0
    for n, s in score.items():
        out[n] = keep[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return out


@pytest.mark.parametrize("few", [1 << 22, 3])  # 3: forces the refining passes and the all-equal path
def test_selection_equals_the_stable_sort_ties_included(few, monkeypatch):
    """Global ranking by histogram selection picks exactly the masks of a stable sort of all scores:
    many ties (scores drawn from a few values, zeros, -0.0, already-pruned entries), every rate."""
    monkeypatch.setattr(ranking, "_FEW", few)
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        shapes = [(int(torch.randint(1, 40, (1,), generator=gen)), 3) for _ in range(4)]
        levels = torch.tensor([0.0, -0.0, 1e-30, 0.25, 0.5, 3.0, 1e30])
        score = {
            f"t{i}": levels[torch.randint(0, 7 if trial % 2 else 3, s, generator=gen)] for i, s in enumerate(shapes)
        }
        if trial % 3 == 0:
            score = {n: s * torch.rand(s.shape, generator=gen, dtype=torch.float64) for n, s in score.items()}
        current = {n: torch.rand(s.shape, generator=gen) < 0.8 for n, s in score.items()} if trial % 4 else None
        for rate in (0.0, 0.01, 0.3, 0.5, 0.77, 0.99):
            got = prune.masks_for_rate(score, rate, "global", current)
            want = _sorted_reference(score, rate, current)
            assert all(torch.equal(got[n], want[n]) for n in score), (trial, rate)
            layer = prune.masks_for_rate(score, rate, "layer", current)
            for n in score:
                one = _sorted_reference({n: score[n]}, rate, None if current is None else {n: current[n]})
                assert torch.equal(layer[n], one[n]), (trial, rate, n)


def test_selection_holds_one_tensor_of_scores_at_a_time():
    """The scores are asked for one name at a time, a few passes each, and never all kept."""
    calls = []
    w = {f"t{i}": torch.randn(1000, generator=torch.Generator().manual_seed(i)) for i in range(5)}

    def scores(name):
        calls.append(name)
        return w[name].abs().double()

    keep = ranking.keep_top_global(scores, {n: 1000 for n in w}, 0.9)
    assert sum(int(k.sum()) for k in keep.values()) == 500
    assert len(calls) == 2 * len(w)  # a histogram pass and a mask pass: the cut's bin is small
