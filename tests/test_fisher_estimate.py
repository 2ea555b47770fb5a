"""One dispatcher picks the Fisher estimator by name, and one check says when a config needs one."""

import pytest
import torch
from torch import nn

from fisherpack import fisher
from fisherpack.config import CompressConfig
from fisherpack.errors import ConfigError


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    opt = torch.optim.Adam(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, [(x[:16], y[:16]), (x[16:], y[16:])]


def _equal(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_estimate_is_the_named_estimator():
    model, opt, data = _setup()
    _equal(fisher.estimate("adam", model, optimizer=opt), fisher.from_adam(opt, model))
    _equal(fisher.estimate("adam", model, optimizer=opt.state_dict()), fisher.from_adam_state(opt.state_dict(), model))
    _equal(fisher.estimate("empirical", model, batches=data, n_samples=20), fisher.empirical(model, data, n_samples=20))
    _equal(
        fisher.estimate("sampled", model, batches=data, n_samples=20, seed=5),
        fisher.sampled(model, data, n_samples=20, seed=5),
    )
    other = fisher.estimate("sampled", model, batches=data, n_samples=20, seed=6)
    assert any(not torch.equal(other[k], v) for k, v in fisher.sampled(model, data, n_samples=20, seed=5).items())


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("adam", {}, "adam Fisher is read off the optimizer"),
        ("empirical", {}, "empirical Fisher is estimated from data"),
        ("sampled", {}, "sampled Fisher is estimated from data"),
        ("hessian", {}, "unknown Fisher estimator 'hessian'"),
    ],
)
def test_estimate_says_what_is_missing(source, kwargs, message):
    model, _, _ = _setup()
    with pytest.raises(ConfigError, match=message):
        fisher.estimate(source, model, **kwargs)


@pytest.mark.parametrize(
    ("config", "masks_given", "needs"),
    [
        (CompressConfig(), False, True),  # waterfill widths
        (CompressConfig(allocation="uniform"), False, False),  # nothing pruned, uniform widths
        (CompressConfig(allocation="uniform", rate=0.5), False, True),  # obd ranking
        (CompressConfig(allocation="uniform", rate=0.5), True, False),  # masks given: no ranking
        (CompressConfig(allocation="uniform", rate=0.5, criterion="magnitude"), False, False),
        (CompressConfig(allocation="uniform", overrides=(("fc*", {"rate": 0.5}),)), False, True),
        (CompressConfig(allocation="uniform", overrides=(("fc*", {"bits": 3}),)), False, False),
    ],
)
def test_needs_fisher(config, masks_given, needs):
    assert config.needs_fisher(masks_given=masks_given) is needs
