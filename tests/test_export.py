"""Export for places without fisherpack: safetensors bit for bit, ONNX checked with onnxruntime."""

import pytest
import torch
from test_custom_models import TinyLM, _trained

import fisherpack
from fisherpack import export
from fisherpack.errors import ConfigError, FisherpackError


@pytest.fixture(scope="module")
def packed():
    model, opt = _trained()
    return fisherpack.compress(model, fisherpack.fisher.from_adam(opt, model), fisherpack.CompressConfig(rate=0.5))


def test_safetensors_holds_every_name_bit_for_bit_and_loads_into_the_model(packed, tmp_path):
    from safetensors.torch import load, safe_open

    blob = export.safetensors_bytes(packed)
    loaded, decoded = load(blob), packed.state_dict()
    assert set(loaded) == set(decoded)  # the tied head.weight too: safetensors has no aliases
    for name, t in decoded.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert loaded[name].reshape(-1).view(torch.uint8).tolist() == t.reshape(-1).view(torch.uint8).tolist(), name
    model = TinyLM()
    model.load_state_dict(loaded)
    (tmp_path / "m.safetensors").write_bytes(blob)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata()["fisherpack"].startswith("{") and "config" in f.metadata()["fisherpack"]


def test_onnx_of_a_custom_network_runs_in_onnxruntime(packed):
    import onnx

    model = fisherpack.load_into(TinyLM(), packed).eval()
    tokens = torch.randint(0, 50, (1, 8))  # a batch of 1 is doubled for tracing: the batch stays dynamic
    proto = export.onnx_bytes(model, tokens)
    onnx.checker.check_model(onnx.load_from_string(proto))
    onnxruntime = pytest.importorskip("onnxruntime")  # in the test extra; without it only the checker runs
    session = onnxruntime.InferenceSession(proto)
    for n in (1, 3):
        x = torch.randint(0, 50, (n, 8))
        (got,) = session.run(None, {"input": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-4, atol=1e-5)


def test_onnx_export_errors_are_one_line():
    class Opaque(torch.nn.Module):
        def forward(self, x):
            return x * 2 if int(x.sum()) > 0 else x  # control flow on data: torch.export cannot trace it

    with pytest.raises(FisherpackError, match="torch.onnx.export failed .*data-dependent") as exc:
        export.onnx_bytes(Opaque(), torch.zeros(2, 3))
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value)
    with pytest.raises(ConfigError, match="batch dimension"):
        export.onnx_bytes(Opaque(), torch.tensor(1.0))
