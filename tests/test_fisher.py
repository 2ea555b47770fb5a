import pytest
import torch
from helpers import per_sample_square_sums
from torch import nn

from fisherpack import fisher
from fisherpack.errors import ConfigError


def _tiny(dtype=torch.float64):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)
    x = torch.randn(37, 5, dtype=dtype)
    y = torch.randint(0, 3, (37,))
    return model, x, y


def test_empirical_equals_a_per_sample_loop_in_float64():
    model, x, y = _tiny()
    expected = {n: s / len(x) for n, s in per_sample_square_sums(model, x, y).items()}
    got = fisher.empirical(model, [(x[:20], y[:20]), (x[20:], y[20:])], chunk=8)
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-12, atol=1e-15)


def test_empirical_stops_after_n_samples_across_batches():
    model, x, y = _tiny()
    expected = {n: s / 23 for n, s in per_sample_square_sums(model, x[:23], y[:23]).items()}
    got = fisher.empirical(model, [(x[:10], y[:10]), (x[10:], y[10:])], n_samples=23, chunk=4)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-12, atol=1e-15)


def test_sampled_fisher_matches_its_expectation_over_the_softmax():
    model, x, y = _tiny()
    x = x[:3]
    # exact true Fisher: sum over labels of p(y|x) * grad(log p(y|x))^2, averaged over x
    exact = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    probs = torch.softmax(model(x), -1).detach()
    for i in range(len(x)):
        for label in range(3):
            g = per_sample_square_sums(model, x[i : i + 1], torch.tensor([label]))
            for n in exact:
                exact[n] += probs[i, label] * g[n] / len(x)
    reps = 4000
    xs, ys = x.repeat(reps, 1), torch.zeros(3 * reps, dtype=torch.long)
    got = fisher.sampled(model, [(xs, ys)], seed=3, chunk=1000)
    for n in exact:
        torch.testing.assert_close(got[n], exact[n], rtol=0.08, atol=1e-6)
    again = fisher.sampled(model, [(xs, ys)], seed=3, chunk=1000)
    assert all(torch.equal(got[n], again[n]) for n in got)


def test_from_adam_equals_a_hand_computed_running_mean_of_squared_gradients():
    model, x, y = _tiny()
    beta2 = 0.99
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, beta2))
    v = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for step in range(4):
        xb, yb = x[step * 8 : step * 8 + 8], y[step * 8 : step * 8 + 8]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        for n, p in model.named_parameters():
            v[n] = beta2 * v[n] + (1 - beta2) * p.grad**2
        opt.step()
    got = fisher.from_adam(opt, model)
    corrected = fisher.from_adam(opt, model, bias_correction=True)
    for n in v:
        torch.testing.assert_close(got[n], v[n], rtol=1e-12, atol=0)
        torch.testing.assert_close(corrected[n], v[n] / (1 - beta2**4), rtol=1e-12, atol=0)


def test_from_adam_without_state_is_a_clear_error():
    model, _, _ = _tiny()
    with pytest.raises(ConfigError, match="no Adam state.*'0.weight'"):
        fisher.from_adam(torch.optim.Adam(model.parameters()), model)
    with pytest.raises(ConfigError, match="no Adam state"):
        fisher.from_adam(torch.optim.SGD(model.parameters(), lr=0.1), model)


def test_empty_data_is_a_clear_error():
    model, x, y = _tiny()
    with pytest.raises(ConfigError, match="no samples"):
        fisher.empirical(model, [])


def test_fisher_runs_in_eval_mode_and_restores_training_mode():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    model.train()
    out = fisher.empirical(model, [(torch.randn(6, 5), torch.randint(0, 3, (6,)))])
    assert model.training
    assert out["1.weight"].shape == (4,) and torch.all(out["1.weight"] >= 0)
