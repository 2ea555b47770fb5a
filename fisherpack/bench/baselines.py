"""Baselines that fisherpack is measured against but does not store: k-means weight sharing.

Deep Compression (Han et al. 2016) quantizes each layer by k-means with ``2**bits`` centroids
initialised linearly between the layer's min and max weight, stores ``bits``-bit indices and a
float32 codebook per layer, and fine-tunes the centroids (the gradient of a centroid is the sum of
the gradients of the weights that share it). Pruned (zero) weights stay zero and out of the
clustering. This is here to compare against at equal average bits, not as a file format.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["kmeans_1d", "SharedWeights"]


def kmeans_1d(values: torch.Tensor, bits: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on 1-D ``values`` with linear initialisation: (centroids (k,), index (n,))."""
    if not 1 <= bits <= 16:
        raise ConfigError(f"k-means bits must be in 1..16, got {bits}")
    v = values.detach().double().flatten()
    k = 1 << bits
    if v.numel() == 0:
        return torch.zeros(k, dtype=torch.float32), torch.zeros(0, dtype=torch.long)
    centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    index = torch.zeros_like(v, dtype=torch.long)
    for _ in range(iters):
        # nearest centroid via the sorted midpoints: O(n log k), no (n, k) matrix
        mids = (centroids[1:] + centroids[:-1]) / 2
        index = torch.bucketize(v, mids)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, index, v)
        counts = torch.bincount(index, minlength=k).double()
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        updated, _ = torch.sort(updated)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    mids = (centroids[1:] + centroids[:-1]) / 2
    return centroids.float(), torch.bucketize(v, mids)


class SharedWeights:
    """A layer's weights as ``codebook[index]`` on its kept entries (zeros elsewhere).

    ``codebook`` is a leaf tensor to fine-tune; calling the object gives the dense weight, through
    which gradients reach the codebook summed over the entries that share each centroid.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> None:
        self.shape, self.mask = weight.shape, mask.flatten()
        codebook, self.index = kmeans_1d(weight.flatten()[self.mask], bits)
        self.codebook = codebook.clone().requires_grad_()

    def __call__(self) -> torch.Tensor:
        dense = torch.zeros(self.mask.numel(), dtype=self.codebook.dtype)
        dense = dense.masked_scatter(self.mask, self.codebook[self.index])
        return dense.view(self.shape)
