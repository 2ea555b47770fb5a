import torch

from fisherpack.bench.baselines import SharedWeights, kmeans_1d


def test_kmeans_finds_well_separated_clusters():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)]) + 0.01 * torch.randn(
        100
    )
    centroids, index = kmeans_1d(values, 2)
    assert centroids.numel() == 4
    recon = centroids[index]
    assert (recon - values).abs().max() < 0.05


def test_kmeans_error_falls_with_more_bits():
    values = torch.randn(2000)
    errors = [float(((c[i] - values) ** 2).mean()) for c, i in (kmeans_1d(values, b) for b in (1, 2, 3, 4))]
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_shared_weights_gradient_is_the_sum_over_sharing_entries():
    w = torch.tensor([[0.1, -1.0, 0.0], [1.0, 0.12, -0.9]])
    mask = w != 0
    shared = SharedWeights(w, mask, 2)
    dense = shared()
    assert torch.all(dense[~mask] == 0)
    upstream = torch.arange(6.0).view(2, 3)
    (dense * upstream).sum().backward()
    expected = torch.zeros(4).index_add_(0, shared.index, upstream.flatten()[mask.flatten()])
    assert torch.equal(shared.codebook.grad, expected)
