"""Seeded k-means in torch: k-means++ initialisation, then Lloyd iterations.

Runs on the device of its input and vectorises over rows (distances are computed
``chunk_rows`` rows at a time, so memory beyond the data is ``O(chunk_rows · k)``).
The result depends only on the *multiset* of input rows, never on their order: the
rows are first put in a canonical order (sorted, duplicates merged into one weighted
row by ``torch.unique``), so permuting the input permutes the labels and nothing else,
bit for bit on one device.
"""

from __future__ import annotations

import math

import attrs
import torch
from attrkit.errors import ArgumentError

__all__ = ["KMeansResult", "kmeans", "standardize"]


@attrs.frozen
class KMeansResult:
    """What :func:`kmeans` returns.

    Attributes:
        labels: ``LongTensor[n]``, the cluster of each input row; every index
            ``0..k'-1`` is used (``k' <= n_clusters``: empty clusters are dropped).
        centers: ``Tensor[k', d]``, the cluster means in the space clustered in
            (standardised features when ``standardize=True``).
        inertia: sum over rows of the squared distance to their centre (same space).
        n_iter: Lloyd iterations run.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int


def standardize(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-feature standardisation ``(x - mean) / std`` (population std, optionally weighted).

    A constant feature becomes 0 (instead of dividing by a zero or round-off std).

    Args:
        x: ``Tensor[n, d]`` floating point.
        weights: ``Tensor[n]`` non-negative row weights (multiplicities); default 1.

    Returns:
        ``Tensor[n, d]`` in ``x``'s dtype: every non-constant feature has (weighted)
        mean 0 and variance 1.
    """
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if weights is None else weights.to(x)
    mean = (w[:, None] * x).sum(0) / w.sum()
    centred = x - mean
    std = ((w[:, None] * centred.square()).sum(0) / w.sum()).sqrt()
    constant = (x == x[:1]).all(0)
    return torch.where(constant, torch.zeros_like(x), centred / torch.where(constant, torch.ones_like(std), std))


def _nearest(z: torch.Tensor, centers: torch.Tensor, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels LongTensor[m], squared distances Tensor[m])`` of each row's nearest centre."""
    c2 = centers.square().sum(1)
    labels, dist = [], []
    for start in range(0, z.shape[0], chunk_rows):
        rows = z[start : start + chunk_rows]
        d2 = (rows.square().sum(1, keepdim=True) - 2 * rows @ centers.T + c2).clamp_min(0)
        value, index = d2.min(1)
        labels.append(index)
        dist.append(value)
    return torch.cat(labels), torch.cat(dist)


def _draw(p: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor | None:
    """``LongTensor[count]`` of indices drawn with probability ``∝ p`` (``None`` if ``p`` is all zero)."""
    cdf = torch.cumsum(p.double(), 0)
    if not cdf[-1] > 0:
        return None
    u = torch.rand(count, generator=generator, dtype=torch.float64).to(cdf.device)
    return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max(p.numel() - 1)


def _plus_plus(z: torch.Tensor, w: torch.Tensor, k: int, generator: torch.Generator, chunk_rows: int) -> torch.Tensor:
    """Greedy k-means++ seeding: each new centre is the best (lowest weighted potential)
    of ``2 + ⌊ln k⌋`` candidates drawn ``∝ weight · D²`` to the centres chosen so far."""
    trials = 2 + int(math.log(k))
    chosen = _draw(w, 1, generator)
    d2 = _nearest(z, z[chosen], chunk_rows)[1]
    while chosen.numel() < k:
        candidates = _draw(w * d2, trials, generator)
        if candidates is None:  # fewer distinct rows than k: the rest would duplicate a centre
            break
        to_candidate = torch.stack([_nearest(z, z[c : c + 1], chunk_rows)[1] for c in candidates.tolist()])
        potentials = torch.minimum(d2, to_candidate)
        best = int(torch.argmin((potentials * w).sum(1)))
        chosen = torch.cat([chosen, candidates[best : best + 1]])
        d2 = potentials[best]
    return z[chosen].clone()


def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    standardize_features: bool = True,
    chunk_rows: int = 4096,
) -> KMeansResult:
    """Cluster the rows of ``x`` into at most ``n_clusters`` groups.

    Steps: flatten each row; merge duplicate rows into one row weighted by its count,
    in sorted order; standardise every feature (weighted mean 0, variance 1; constant
    features dropped to 0) unless ``standardize_features=False``; seed ``k`` centres by
    greedy k-means++ (``torch.Generator`` seeded with ``seed``, on the CPU, so the draw is the
    same on every device); then Lloyd iterations (assign each row to its nearest
    centre, move each centre to its cluster's weighted mean) until the centres move
    by at most ``tol`` times the mean feature variance in total squared distance, or
    ``max_iter`` iterations. A cluster left empty is re-seeded deterministically with
    the rows farthest from their centres (largest distance first, ties to the lower
    row). Clusters still empty at the end are dropped and the rest renumbered
    ``0..k'-1`` in centre order.

    Args:
        x: ``Tensor[n, ...]``, one example per row (any trailing shape, flattened;
            integer inputs are cast to float32), finite.
        n_clusters: ``k >= 1``; at most the number of distinct rows is used.
        seed: seed of the k-means++ draw.
        max_iter: ``>= 1``, the most Lloyd iterations.
        tol: ``>= 0``, the relative convergence threshold above.
        standardize_features: whiten (per-feature standardisation) before clustering.
        chunk_rows: rows per distance block (memory ``chunk_rows × k`` numbers).

    Returns:
        :class:`KMeansResult`, on ``x``'s device; ``labels`` is ``LongTensor[n]``.

    Raises:
        ValueError: ``x`` is empty or not finite, or an argument is out of range.

    Example:
        >>> x = torch.cat([torch.randn(20, 2), torch.randn(20, 2) + 10])
        >>> kmeans(x, 2, seed=0).labels.unique().numel()
        2
    """
    if n_clusters < 1 or max_iter < 1 or tol < 0 or chunk_rows < 1:
        raise ArgumentError(
            f"kmeans needs n_clusters >= 1, max_iter >= 1, tol >= 0 and chunk_rows >= 1; got n_clusters={n_clusters}, "
            f"max_iter={max_iter}, tol={tol}, chunk_rows={chunk_rows}"
        )
    if x.dim() == 0 or x.shape[0] == 0:
        raise ArgumentError(f"kmeans needs at least one row, got a tensor of shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    x = x if x.is_floating_point() else x.float()
    if not torch.isfinite(x).all():
        raise ArgumentError("kmeans inputs must be finite (found NaN or inf)")
    rows, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    w = counts.to(rows.dtype)
    z = standardize(rows, w) if standardize_features else rows
    generator = torch.Generator().manual_seed(seed)
    centers = _plus_plus(z, w, min(n_clusters, z.shape[0]), generator, chunk_rows)
    k = centers.shape[0]
    mean = (w[:, None] * z).sum(0) / w.sum()
    threshold = tol * float((w[:, None] * (z - mean).square()).sum(0).mean() / w.sum())
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels, d2 = _nearest(z, centers, chunk_rows)
        mass = torch.zeros(k, dtype=z.dtype, device=z.device).index_add_(0, labels, w)
        sums = torch.zeros_like(centers).index_add_(0, labels, w[:, None] * z)
        moved = sums / mass.clamp_min(torch.finfo(z.dtype).tiny)[:, None]
        empty = mass == 0
        if empty.any():
            farthest = torch.argsort(d2, descending=True, stable=True)[: int(empty.sum())]
            moved[empty] = z[farthest]
        shift = float((moved - centers).square().sum())
        centers = moved
        if shift <= threshold and not empty.any():
            break
    labels, d2 = _nearest(z, centers, chunk_rows)
    used = torch.unique(labels)
    renumber = torch.full((k,), -1, dtype=torch.long, device=z.device)
    renumber[used] = torch.arange(used.numel(), device=z.device)
    return KMeansResult(
        labels=renumber[labels][inverse], centers=centers[used], inertia=float((w * d2).sum()), n_iter=n_iter
    )
