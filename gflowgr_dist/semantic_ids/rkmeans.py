"""Residual k-means: the default, training-free semantic-ID tokeniser.

Level 1 clusters the standardised item embeddings; each next level clusters what the previous
levels left unexplained (the residual to the assigned centroid). Items close in text space share
long code prefixes, which is what makes semantic IDs generalise (TIGER, OneRec's RQ-Kmeans).
"""

from __future__ import annotations

import numpy as np
import torch


def standardize(embeddings: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension, [I, D] -> [I, D] float32.

    Quantisers collapse onto a few codes when one dimension dominates the distance; TIGER
    reimplementations standardise before the RQ-VAE for that reason.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    return ((x - x.mean(axis=0)) / std).astype(np.float32)


def kmeans(
    x: torch.Tensor, k: int, *, iters: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding.

    Args:
        x: points, [N, D] float32.
        k: number of clusters; when k >= N each point becomes its own centroid (padded with
            copies) so that every code is still defined.
        iters: Lloyd iterations (stops early once assignments are stable).
        generator: seeded torch generator; the result depends on nothing else.

    Returns:
        (centroids [k, D], assignment [N] int64)
    """
    n = x.shape[0]
    if n <= k:
        pad = x[torch.arange(k) % n]
        return pad.clone(), torch.arange(n)
    centroids = _kmeans_plus_plus(x, k, generator)
    assign = torch.full((n,), -1, dtype=torch.int64)
    for _ in range(iters):
        # Assign each point to its nearest centroid.
        new_assign = torch.cdist(x, centroids).argmin(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign

        # Move centroids to their members' mean; re-seed empty ones at the worst-served point.
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = torch.cdist(x, centroids).min(dim=1).values.argmax()
            centroids[empty] = x[far]
    assign = torch.cdist(x, centroids).argmin(dim=1)
    return centroids, assign


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    dist2 = ((x - x[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = float(dist2.sum())
        if total <= 0:
            nxt = int(torch.randint(n, (1,), generator=generator))
        else:
            nxt = int(torch.multinomial(dist2 / total, 1, generator=generator))
        centroids.append(x[nxt])
        dist2 = torch.minimum(dist2, ((x - x[nxt]) ** 2).sum(dim=1))
    return torch.stack(centroids)


def residual_kmeans(
    embeddings: np.ndarray, codebook_sizes: list[int], *, iters: int = 50, seed: int = 0
) -> np.ndarray:
    """Semantic codes by residual k-means.

    Args:
        embeddings: item embeddings, [I, D].
        codebook_sizes: codes per level, e.g. [32, 32, 32].
        iters: Lloyd iterations per level.
        seed: the only source of randomness.

    Returns:
        codes, [I, L] int64, codes[:, l] in [0, codebook_sizes[l]).
    """
    generator = torch.Generator().manual_seed(seed)
    residual = torch.from_numpy(standardize(embeddings))
    codes = []
    for size in codebook_sizes:
        # Quantise what earlier levels left, then subtract the chosen centroid.
        centroids, assign = kmeans(residual, size, iters=iters, generator=generator)
        codes.append(assign)
        residual = residual - centroids[assign]
    return torch.stack(codes, dim=1).numpy().astype(np.int64)
