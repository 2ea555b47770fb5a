"""Bring your own model: a network that is none of ours, with default settings, through a file and back."""

import pytest
import torch
from torch import nn

import fisherpack
import fisherpack.pipeline
from fisherpack.compression import compressible
from fisherpack.errors import ConfigError
from fisherpack.fpk.tensors import Alias, QuantTensor, RawTensor

VOCAB, DIM, STEPS = 50, 16, 6


class Gain(nn.Module):
    """A custom layer with its own parameter: a learned gain per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyLM(nn.Module):
    """Tokens (N, T) int64 -> logits (N, VOCAB); the output layer is tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.block = Residual(DIM)
        self.gain = Gain(DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.gain(self.block(self.emb(tokens).transpose(1, 2)))  # (N, DIM, T)
        return self.head(torch.tanh(self.mix(h.mean(2))))


def _batches(n: int = 4, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, VOCAB, (size, 8), generator=g)  # (size, T) tokens
        out.append((x, (x[:, 0] + 1) % VOCAB))  # predict the successor of the first token
    return out


def _trained() -> tuple[TinyLM, torch.optim.Optimizer]:
    model = TinyLM()
    opt = torch.optim.AdamW(model.named_parameters(), lr=1e-2)
    for x, y in _batches() * STEPS:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), opt


def test_custom_network_with_defaults_round_trips_through_a_file(tmp_path):
    model, opt = _trained()
    assert compressible(model) == ["emb.weight", "block.conv1.weight", "block.conv2.weight", "mix.weight"]
    packed = fisherpack.compress(model, fisherpack.fisher.from_adam(opt, model))  # default config
    path = tmp_path / "lm.fpk"
    fisherpack.save(packed, path)
    fresh = fisherpack.load_into(TinyLM(), path).eval()

    original = model.state_dict()
    stored = fisherpack.load(path).tensors
    assert stored["head.weight"] == Alias("emb.weight")
    assert fresh.head.weight is fresh.emb.weight
    for name, tensor in fresh.state_dict().items():
        entry = stored[name]
        if isinstance(entry, RawTensor):  # BatchNorm statistics, num_batches_tracked, biases, gain
            assert tensor.dtype == original[name].dtype and torch.equal(tensor, original[name]), name
        elif isinstance(entry, QuantTensor):
            assert torch.equal(tensor, entry.dequantize()), name
    assert fresh.block.bn1.num_batches_tracked.dtype == torch.int64
    assert int(fresh.block.bn1.num_batches_tracked) == len(_batches()) * STEPS

    # outputs: exactly those of the original with its weights rounded, and within quantization error
    # of the original: the relative output error is at most the sum of the relative weight errors
    quantized = {n: e.dequantize() for n, e in packed.tensors.items() if isinstance(e, QuantTensor)}
    rounded = TinyLM()
    rounded.load_state_dict({**original, **quantized, "head.weight": quantized["emb.weight"]})  # tied
    x, y = (torch.cat(t) for t in zip(*_batches(seed=1)))
    with torch.no_grad():
        want, got = model(x), fresh(x)
        assert torch.equal(got, rounded.eval()(x))
    weight_error = sum(float((q - original[n]).norm() / original[n].norm()) for n, q in quantized.items())
    assert 0 < (got - want).norm() / want.norm() <= weight_error
    loss = [float(nn.functional.cross_entropy(out, y)) for out in (want, got)]
    assert abs(loss[1] - loss[0]) < 0.02 * loss[0]


def test_fisher_from_data_on_a_custom_network_and_tuple_inputs():
    model, _ = _trained()
    empirical = fisherpack.fisher.empirical(model, _batches(1, 16))
    assert set(empirical) == {n for n, _ in model.named_parameters()} and "head.weight" not in empirical

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(z)

    two = TwoInputs()
    xs, zs, ys = torch.randn(6, 3), torch.randn(6, 2), torch.randint(0, 4, (6,))
    fisher = fisherpack.fisher.empirical(two, [((xs, zs), ys)], chunk=4)
    one_by_one = {n: torch.zeros_like(p) for n, p in two.named_parameters()}
    for i in range(6):  # brute force: one backward pass per sample
        two.zero_grad()
        nn.functional.cross_entropy(two(xs[i : i + 1], zs[i : i + 1]), ys[i : i + 1], reduction="sum").backward()
        for n, p in two.named_parameters():
            one_by_one[n] += p.grad.square() / 6
    for n in one_by_one:
        torch.testing.assert_close(fisher[n], one_by_one[n])
    with pytest.raises(ConfigError, match="batch size of y"):
        fisherpack.fisher.empirical(two, [((xs, zs[:5]), ys)])


def test_fisher_from_a_saved_optimizer_state_equals_the_live_one():
    model, opt = _trained()
    saved = fisherpack.fisher.from_adam_state(opt.state_dict(), model)
    live = fisherpack.fisher.from_adam(opt, model)
    assert saved.keys() == live.keys() and all(torch.equal(saved[n], live[n]) for n in live)
    with pytest.raises(ConfigError, match="names parameter 'weight', which the model does not have"):
        fisherpack.fisher.from_adam_state(torch.optim.Adam(nn.Linear(2, 2).named_parameters()).state_dict(), model)


def test_saved_optimizer_state_is_matched_by_name_not_position():
    """Issue 11: groups listed in another order, equal shapes: position would swap the two slots."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    named = dict(model.named_parameters())
    order = ["2.weight", "2.bias", "0.weight", "0.bias"]  # the second layer's group first
    groups = [{"params": [(n, named[n]) for n in order[:2]]}, {"params": [(n, named[n]) for n in order[2:]]}]
    opt = torch.optim.Adam(groups)
    for _ in range(3):
        opt.zero_grad()
        (model(torch.randn(8, 4)).square().sum() * torch.tensor([1.0, 10.0, 100.0, 1000.0])).sum().backward()
        opt.step()
    saved = fisherpack.fisher.from_adam_state(opt.state_dict(), model)
    live = fisherpack.fisher.from_adam(opt, model)
    assert all(torch.equal(saved[n], live[n]) for n in named)
    unnamed = torch.optim.Adam([{"params": [named[n] for n in order[:2]]}, {"params": [named[n] for n in order[2:]]}])
    unnamed.load_state_dict(
        {
            **opt.state_dict(),
            "param_groups": [
                {k: v for k, v in g.items() if k != "param_names"} for g in opt.state_dict()["param_groups"]
            ],
        }
    )
    with pytest.raises(ConfigError, match="'0.weight' and '2.weight' have the same shape"):
        fisherpack.fisher.from_adam_state(unnamed.state_dict(), model)


def test_per_layer_overrides_of_rate_and_bits():
    model, opt = _trained()
    fisher = fisherpack.fisher.from_adam(opt, model)
    config = fisherpack.CompressConfig(
        rate=0.5, bits=4, overrides=(("block.*", {"bits": 8}), ("mix.weight", {"rate": 0.9}), ("*", {"bits": 2}))
    )
    packed = fisherpack.compress(model, fisher, config)
    q = {n: e for n, e in packed.tensors.items() if isinstance(e, QuantTensor)}
    assert q["block.conv1.weight"].bits == (8,) and q["block.conv2.weight"].bits == (8,)
    assert q["mix.weight"].bits == (2,) and q["emb.weight"].bits == (2,)  # the first rule setting bits wins
    assert q["mix.weight"].kept == DIM * DIM - round(0.9 * DIM * DIM)
    shared = [q[n] for n in ("emb.weight", "block.conv1.weight", "block.conv2.weight")]
    assert sum(t.kept for t in shared) == sum(t.numel for t in shared) - round(0.5 * sum(t.numel for t in shared))
    assert fisherpack.CompressConfig.from_dict(packed.meta["config"]) == config
    with pytest.raises(ConfigError, match="matches no compressed tensor"):
        fisherpack.compress(model, fisher, fisherpack.CompressConfig(overrides=(("mixx.*", {"bits": 8}),)))
    rated = fisherpack.PipelineConfig(compress=fisherpack.CompressConfig(overrides=(("fc*", {"rate": 0.5}),)))
    with pytest.raises(ConfigError, match="rate overrides apply to one-shot"):
        fisherpack.pipeline.run(rated, *fisherpack.data.synthetic(10, 10).tensors())


def test_a_file_of_another_model_names_the_first_mismatching_tensor(tmp_path):
    model, _ = _trained()
    path = tmp_path / "lm.fpk"
    fisherpack.save(fisherpack.compress(model, None, fisherpack.CompressConfig(allocation="uniform", bits=4)), path)

    class Wider(TinyLM):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(DIM, DIM + 1)

    with pytest.raises(ConfigError, match=r"^tensor 'mix.weight' has shape \(16, 16\) in the file but \(17, 16\)"):
        fisherpack.load_into(Wider(), path)
    with pytest.raises(ConfigError, match="no tensor 'fc1.weight'"):
        fisherpack.load_into(fisherpack.models.build("lenet300"), path)


def test_odd_state_dict_entries_get_clear_errors():
    class Complex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))

    with pytest.raises(ConfigError, match="'phase' has dtype torch.complex64"):
        fisherpack.compress(Complex(), None, fisherpack.CompressConfig(allocation="uniform", bits=4))
