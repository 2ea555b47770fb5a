"""Issue 11: any model, any loss: Fisher for sequence logits and regression, the exact fallback
when vmap cannot run the model, every weight matrix compressed by default, one-line data errors."""

import warnings

import pytest
import torch
from torch import nn

import fisherpack
from fisherpack import fisher, persample
from fisherpack.compression import compressible
from fisherpack.errors import ConfigError, DataError


def _loop_fisher(model, x, y, loss):
    """Brute-force reference: mean over samples of squared per-sample gradients, float64."""
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad()
        loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            sums[n] += p.grad.square()
    return {n: s / len(y) for n, s in sums.items()}


class GRUHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class SeqLM(nn.Module):
    """(N, T) tokens -> (N, T, V) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 11)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.emb(t)
        return self.out(h + self.attn(h, h, h, need_weights=False)[0])


def test_gru_falls_back_to_the_exact_loop_with_one_notice():
    torch.manual_seed(0)
    model = GRUHead().double()
    x, y = torch.randn(7, 5, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    notes = []
    got = fisher.empirical(model, [(x, y)], notice=notes.append)
    assert len(notes) == 1 and "exact per-sample loop" in notes[0] and "\n" not in notes[0]
    want = _loop_fisher(model, x, y, lambda o, t: nn.functional.cross_entropy(o, t, reduction="sum"))
    assert all(torch.allclose(got[n], want[n], rtol=1e-10, atol=1e-14) for n in want)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fisher.empirical(model, [(x, y)])
    assert [w.category for w in caught] == [persample.FallbackNotice]


def test_sequence_logits_and_regression_have_a_fisher_by_default():
    torch.manual_seed(0)
    lm = SeqLM().double()
    t, y = torch.randint(0, 11, (6, 5)), torch.randint(0, 11, (6, 5))
    got = fisher.empirical(lm, [(t, y)])
    sum_ce = lambda o, s: nn.functional.cross_entropy(o.reshape(-1, 11), s.reshape(-1), reduction="sum")  # noqa: E731
    want = _loop_fisher(lm, t, y, sum_ce)
    assert all(torch.allclose(got[n], want[n], rtol=1e-9, atol=1e-14) for n in want)
    reg = nn.Linear(3, 2).double()
    x, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    got = fisher.empirical(reg, [(x, z)])
    want = _loop_fisher(reg, x, z, lambda o, s: 0.5 * (o - s).square().sum())
    assert all(torch.allclose(got[n], want[n]) for n in want)
    sampled = fisher.sampled(lm, [(t, y)], seed=1)
    shapes = {n: p.shape for n, p in lm.named_parameters()}
    assert {n: v.shape for n, v in sampled.items()} == shapes


def test_data_that_does_not_fit_gets_one_line():
    model = nn.Linear(3, 4)
    with pytest.raises(DataError, match=r"cannot run on the data \(inputs \(1, 3\) torch.float64\)"):
        fisher.empirical(model, [(torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1]))])
    with pytest.raises(DataError, match=r"labels must be in 0..3 .* found 7"):
        fisher.empirical(model, [(torch.randn(2, 3), torch.tensor([0, 7]))])
    with pytest.raises(DataError, match=r"integer labels \(1, 5\) must have the output's shape"):
        fisher.empirical(model, [(torch.randn(2, 3), torch.zeros(2, 5, dtype=torch.long))])


def test_every_weight_matrix_is_compressed_by_default():
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(5, 4))
            self.lstm = nn.LSTM(4, 3)
            self.norm = nn.LayerNorm(4)

    assert compressible(SeqLM()) == ["emb.weight", "attn.in_proj_weight", "attn.out_proj.weight", "out.weight"]
    assert compressible(GRUHead()) == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"]
    assert compressible(Bare()) == ["table", "lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    packed = fisherpack.compress(SeqLM(), None, fisherpack.CompressConfig(allocation="uniform", quantize_biases=True))
    quantized = {n for n, e in packed.tensors.items() if isinstance(e, fisherpack.fpk.tensors.QuantTensor)}
    assert "attn.in_proj_bias" in quantized and "out.bias" in quantized and "attn.in_proj_weight" in quantized


def test_a_pattern_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="include pattern 'head.wieght' matches no parameter"):
        compressible(GRUHead(), include=("rnn.*", "head.wieght"))
    with pytest.raises(ConfigError, match="exclude pattern 'nope' matches no parameter"):
        compressible(GRUHead(), exclude=("head.*", "nope"))


def test_a_frozen_weight_is_named_when_the_fisher_cannot_cover_it():
    torch.manual_seed(0)
    model = GRUHead()
    model.rnn.weight_hh_l0.requires_grad_(False)
    x, y = torch.randn(6, 5, 4), torch.randint(0, 3, (6,))
    est = fisher.empirical(model, [(x, y)], notice=lambda _: None)
    assert "rnn.weight_hh_l0" not in est
    with pytest.raises(ConfigError, match="'rnn.weight_hh_l0' is frozen"):
        fisherpack.compress(model, est, fisherpack.CompressConfig(rate=0.5))
    cfg = fisherpack.CompressConfig(rate=0.5, exclude=("rnn.weight_hh_l0",))
    packed = fisherpack.compress(model, est, cfg)
    assert torch.equal(packed.state_dict()["rnn.weight_hh_l0"], model.rnn.weight_hh_l0.detach())


def test_the_pipeline_and_the_pruner_refuse_a_frozen_weight_by_name():
    from fisherpack import pipeline
    from fisherpack.plugin import Pruner

    model = GRUHead()
    model.head.weight.requires_grad_(False)
    x, y = torch.randn(8, 28, 4), torch.randint(0, 3, (8,))
    cfg = fisherpack.PipelineConfig(model="gru", epochs=1, rounds=1, compress=fisherpack.CompressConfig(rate=0.5))
    with pytest.raises(ConfigError, match="'head.weight' is frozen"):
        pipeline.run(cfg, x, y, x, y, model=model)
    with pytest.raises(ConfigError, match="'head.weight' is frozen"):
        Pruner(model)
    out = pipeline.run(cfg.replace(compress=cfg.compress.replace(exclude=("head.weight",))), x, y, x, y, model=model)
    assert torch.equal(out.compressed.state_dict()["head.weight"], model.head.weight.detach())
