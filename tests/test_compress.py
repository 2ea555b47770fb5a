import numpy as np
import pytest
import torch
from torch import nn

from fisherpack import models
from fisherpack.compression import compress, compressible
from fisherpack.config import CompressConfig
from fisherpack.errors import ConfigError
from fisherpack.fpk.tensors import Alias, QuantTensor, RawTensor
from fisherpack.loading import load_into, summary


def _fisher(model):
    return {n: torch.rand_like(p) for n, p in model.named_parameters()}


def test_default_compresses_linear_and_conv_weights_only():
    model = models.build("lenet5")
    assert compressible(model) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert compressible(model, include=("fc*",), exclude=("*.bias",)) == ["fc1.weight", "fc2.weight"]


def test_compress_prunes_to_the_rate_and_keeps_biases_exact():
    model = models.build("lenet300")
    c = compress(model, _fisher(model), CompressConfig(rate=0.9, criterion="obd", bits=4, groups=2))
    quant = {n: e for n, e in c.tensors.items() if isinstance(e, QuantTensor)}
    assert set(quant) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    kept = sum(q.kept for q in quant.values())
    total = sum(q.numel for q in quant.values())
    assert kept == total - round(0.9 * total)
    sd = c.state_dict()
    assert torch.equal(sd["fc1.bias"], model.fc1.bias.detach())
    assert isinstance(c.tensors["fc1.bias"], RawTensor)
    assert c.meta["config"]["rate"] == 0.9


def test_decoded_weights_are_the_quantized_values_and_load_into_a_model():
    model = models.build("lenet5")
    c = compress(model, _fisher(model), CompressConfig(rate=0.5, bits=3))
    fresh = load_into(models.build("lenet5"), c)
    q = c.tensors["conv2.weight"]
    expected = np.zeros(q.numel, dtype=np.float32)
    expected[q.mask] = q.values()
    assert torch.equal(fresh.conv2.weight.detach().flatten(), torch.from_numpy(expected))
    assert summary(c, 1000)["params"] == 431_080


def test_tied_weights_are_stored_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    model = Tied()
    c = compress(model, None, CompressConfig(allocation="uniform", bits=8))
    assert isinstance(c.tensors["emb.weight"], QuantTensor)
    assert c.tensors["out.weight"] == Alias("emb.weight")
    sd = c.state_dict()
    assert sd["out.weight"] is sd["emb.weight"]


def test_nothing_to_compress_and_nan_weights_are_clear_errors():
    with pytest.raises(ConfigError, match="no weights to compress"):
        compress(nn.Sequential(nn.ReLU()), None, CompressConfig(allocation="uniform", bits=4))
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(ConfigError, match="'weight' has NaN or Inf"):
        compress(model, None, CompressConfig(allocation="uniform", bits=4))


def test_load_into_names_the_first_mismatching_tensor():
    c = compress(models.build("lenet300"), None, CompressConfig(allocation="uniform", bits=4))
    with pytest.raises(ConfigError, match="no tensor 'conv1.weight'"):
        load_into(models.build("lenet5"), c)
    wrong = nn.Sequential()
    wrong.fc1 = nn.Linear(784, 301)
    with pytest.raises(ConfigError, match="'fc1.weight' has shape \\(300, 784\\) in the file but \\(301, 784\\)"):
        load_into(wrong, c)


def test_quantize_biases_quantizes_but_never_prunes_them():
    model = models.build("lenet300")
    fisher = _fisher(model)
    c = compress(model, fisher, CompressConfig(rate=0.9, bits=6, quantize_biases=True))
    bias = c.tensors["fc1.bias"]
    assert isinstance(bias, QuantTensor) and bias.kept == 300
    err = (c.state_dict()["fc1.bias"] - model.fc1.bias.detach()).abs().max()
    assert 0 < err < model.fc1.bias.detach().abs().max() / 8
    weights = [c.tensors[f"fc{i}.weight"] for i in (1, 2, 3)]
    total = sum(q.numel for q in weights)
    assert sum(q.kept for q in weights) == total - round(0.9 * total)  # biases do not dilute the rate


def test_load_into_streams_a_file_tensor_by_tensor(tmp_path):
    """load_into(model, path) decodes one tensor at a time into the model (no second state dict)
    and gives the same weights as decoding the whole file; tied weights stay tied."""
    from fisherpack.fpk import container as fpk

    torch.manual_seed(0)
    src = models.build("lenet5")
    c = compress(src, None, CompressConfig(rate=0.8, criterion="magnitude", allocation="uniform", bits=4))
    path = tmp_path / "m.fpk"
    fpk.save(c, path)
    want = fpk.load(path).state_dict()
    got = load_into(models.build("lenet5"), path).state_dict()
    assert list(got) == list(want) and all(torch.equal(got[n], want[n]) for n in want)


def test_load_into_a_file_checks_shapes_before_changing_anything(tmp_path):
    from fisherpack.errors import FormatError
    from fisherpack.fpk import container as fpk

    c = compress(models.build("lenet5"), None, CompressConfig(rate=0.5, criterion="magnitude", allocation="uniform"))
    path = tmp_path / "m.fpk"
    fpk.save(c, path)
    other = models.build("lenet300")
    before = {n: t.clone() for n, t in other.state_dict().items()}
    with pytest.raises(ConfigError, match="is it the right model"):
        load_into(other, path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    target = models.build("lenet5")
    before5 = {n: t.clone() for n, t in target.state_dict().items()}
    with pytest.raises(FormatError, match="truncated"):
        load_into(target, path)
    for model, saved in ((other, before), (target, before5)):
        assert all(torch.equal(t, saved[n]) for n, t in model.state_dict().items())
