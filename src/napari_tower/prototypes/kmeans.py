"""Seeded k-means (k-means++ initialisation, Lloyd iterations) in torch.

The points are a bounded, seeded sample of pixel embeddings (tens of thousands
of rows, a few hundred columns), so plain Lloyd on the whole sample is the
cheap, exact choice; the sample size, not the image size, bounds the cost.
scipy's `kmeans2` does the same but computes distances without BLAS, about
ten times slower here; scikit-learn is not a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,) int64
    inertia: float  # sum of squared distances to the assigned centroid


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, K) squared Euclidean distances, via one matrix product."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    return d.clamp_(min=0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    closest = squared_distances(x, x[first][None])[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: repeat one, Lloyd leaves it empty and re-seeds it
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=generator))
        centroids.append(x[idx])
        closest = torch.minimum(closest, squared_distances(x, x[idx][None])[:, 0])
    return torch.stack(centroids)


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iterations: int) -> KMeansResult:
    k = centroids.shape[0]
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iterations):
        d = squared_distances(x, centroids)
        new_labels = d.argmin(1)
        counts = torch.bincount(new_labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, new_labels, x)
        updated = sums / counts.clamp(min=1)[:, None].to(x.dtype)
        empty = counts == 0
        if empty.any():
            # An empty cluster takes the points worst served by their centroid, so K stays K.
            worst = d.gather(1, new_labels[:, None])[:, 0].argsort(descending=True)[: int(empty.sum())]
            updated[empty] = x[worst]
        converged = torch.equal(new_labels, labels) and not empty.any()
        centroids, labels = updated, new_labels
        if converged:
            break
    d = squared_distances(x, centroids)
    labels = d.argmin(1)
    inertia = float(d.gather(1, labels[:, None]).sum())
    return KMeansResult(centroids, labels, inertia)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iterations: int = 50, restarts: int = 3) -> KMeansResult:
    """Cluster the rows of `x` (N, D) into `k` groups; the same seed gives the same result.

    Runs `restarts` k-means++ initialisations and keeps the lowest inertia.
    """
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"need at least k = {k} points as an (N, D) matrix, got shape {tuple(x.shape)}")
    x = x.float()
    generator = torch.Generator().manual_seed(int(seed))
    best: KMeansResult | None = None
    for _ in range(restarts):
        result = _lloyd(x, kmeans_plus_plus(x, k, generator), iterations)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


__all__ = ["KMeansResult", "kmeans", "kmeans_plus_plus", "squared_distances"]
