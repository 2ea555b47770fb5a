"""The sparse runtime: same outputs as dense, sparse only where measured faster."""

import pytest
import torch
from torch import nn

import fisherpack
from fisherpack import runtime
from fisherpack.errors import ConfigError


def _pruned_mlp(density: float = 0.1) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) < density)
    return model.eval()


@pytest.mark.parametrize("kernel", runtime.SPARSE_KERNELS)
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense_for_every_kernel_and_shape(kernel, bias):
    layer = nn.Linear(20, 7, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.3)
    sparse = runtime.SparseLinear(layer, {1: kernel})
    for shape in [(1, 20), (5, 20), (2, 3, 20)]:
        x = torch.randn(shape)
        torch.testing.assert_close(sparse(x), layer(x).detach(), rtol=1e-5, atol=1e-6)
        assert sparse(x).shape == (*shape[:-1], 7)
    assert sparse.weight_csr.col_indices().dtype == torch.int32
    assert sparse.weight_csr.values().numel() == int((layer.weight != 0).sum())


def test_kernel_for_picks_the_nearest_measured_batch_size_in_log_scale():
    sparse = runtime.SparseLinear(nn.Linear(4, 4), {1: "linear", 256: "addmm"})
    assert [sparse.kernel_for(n) for n in (1, 8, 15, 17, 300)] == ["linear", "linear", "linear", "addmm", "addmm"]
    assert sparse.weight_dense is None  # no batch size runs dense: only the CSR weight is kept
    with pytest.raises(ConfigError, match="kernels must map"):
        runtime.SparseLinear(nn.Linear(4, 4), {1: "csc"})


def test_optimize_converts_only_layers_measured_faster(monkeypatch):
    model = _pruned_mlp()
    with torch.no_grad():
        model[4].weight.mul_(torch.rand_like(model[4].weight) < 0.1)
    x1, x64 = torch.randn(1, 64), torch.randn(64, 64)
    want, want1 = model(x64).detach(), model(x1).detach()

    def fake_timing(fns, repeats):  # sparse faster: layer 0 always, layer 2 at batch 1 only, layer 4 never
        x = fns["dense"].args[0]  # the layer's input (n, in)
        rows, cols = x.shape
        sparse_wins = cols == 64 or (cols == 128 and rows == 1)
        return {"dense": 1.0, "addmm": 0.5 if sparse_wins else 2.0, "linear": 0.7 if sparse_wins else 2.0}

    monkeypatch.setattr(runtime, "_median_ms", fake_timing)
    report = runtime.optimize(model, x1, x64, min_sparsity=0.5)
    assert report["0"]["sparse"] and report["0"]["kernels"] == {1: "addmm", 64: "addmm"}
    assert report["2"]["sparse"] and report["2"]["kernels"] == {1: "addmm", 64: "dense"}
    assert not report["4"]["sparse"] and type(model[4]) is nn.Linear
    assert model[0].weight_dense is None and model[2].weight_dense is not None
    torch.testing.assert_close(model(x64), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x1), want1, rtol=1e-5, atol=1e-5)


def test_from_file_really_measures_and_keeps_outputs(tmp_path):
    model = _pruned_mlp(0.05)
    path = tmp_path / "mlp.fpk"
    packed = fisherpack.compress(model, None, fisherpack.CompressConfig(allocation="uniform", bits=6))
    fisherpack.save(packed, path)
    decoded = fisherpack.load_into(_pruned_mlp(1.0), path).eval()
    fast, report = runtime.from_file(_pruned_mlp(1.0), path, torch.randn(1, 64), torch.randn(32, 64), repeats=2)
    assert set(report) == {"0", "2"}  # the output layer is not pruned: below min_sparsity, not timed
    assert all(set(r["ms"]) == {1, 32} and set(r["ms"][1]) == set(runtime.KERNELS) for r in report.values())
    x = torch.randn(32, 64)
    torch.testing.assert_close(fast(x), decoded(x).detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="at least one example"):
        runtime.optimize(model)


def test_an_optimized_model_keeps_a_complete_state_dict_and_compresses_whole():
    """Issue 11: after optimize, state_dict lost the replaced layers and compress dropped them."""
    import fisherpack
    from fisherpack.runtime import SparseLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(30, 20) < 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model[0] = SparseLinear(model[0], {1: "addmm", 64: "dense"})
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    fresh = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    fresh.load_state_dict(after)
    packed = fisherpack.compress(model, None, fisherpack.CompressConfig(bits=8.0, allocation="uniform"))
    assert set(packed.state_dict()) == set(before)
    x = torch.randn(4, 20)
    model.load_state_dict(before)  # loads back into the sparse layer too
    assert torch.allclose(model(x), fresh(x), atol=1e-6)
