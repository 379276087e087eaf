"""Selection rules as pure functions over scores and embeddings; each returns indices into the pool.

* `cdas_select`: CodeACT's Complexity and Diversity Aware Sampling (docs/methods/code_selection.md §1a): per K-means
  cluster, drop IFD ≥ 1, sort by IFD (descending), keep the top ``int(m · |filtered cluster|)``.
* `distribution_select`: distribution-consistent selection (§1b): m learnable centroids trained with
  the paper's contrastive objective, then the nearest unused sample per centroid.
* Baselines: `random_select`, `top_ifd_select` (global top IFD, no clustering), `kcenter_select`
  (k-center greedy on cosine distance).

Embeddings are expected L2-normalised (rows of unit norm), so a dot product is a cosine similarity.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def kmeans_clusters(embeddings: np.ndarray, k: int, seed: int = 42) -> np.ndarray:
    """Cluster labels from scikit-learn's KMeans(n_clusters=k, random_state=seed), as in the paper's code."""
    from sklearn.cluster import KMeans

    if not 1 <= k <= len(embeddings):
        raise ValueError(f"k must be in [1, {len(embeddings)}] (pool size), got {k}")
    return KMeans(n_clusters=k, random_state=seed).fit_predict(np.asarray(embeddings, dtype=np.float32))


def cdas_select(ifd: np.ndarray, clusters: np.ndarray, ratio: float = 0.4, max_ifd: float = 1.0) -> np.ndarray:
    """CDAS: per cluster keep the `ratio` highest-IFD samples among those with IFD < `max_ifd`.

    The quota of a cluster is ``int(ratio · n_filtered)`` (floor, of the filtered cluster). Ties keep
    pool order (stable sort). Returns pool indices, cluster by cluster (clusters in ascending id).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    ifd, clusters = np.asarray(ifd, dtype=np.float64), np.asarray(clusters)
    chosen = []
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        kept = members[ifd[members] < max_ifd]
        order = kept[np.argsort(-ifd[kept], kind="stable")]
        chosen.append(order[: int(len(kept) * ratio)])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def cdas_quotas(
    ifd: np.ndarray, clusters: np.ndarray, ratio: float = 0.4, max_ifd: float = 1.0
) -> dict[int, dict[str, int]]:
    """Per cluster: pool size, size after the IFD filter, and the number kept (for reports)."""
    ifd, clusters = np.asarray(ifd, dtype=np.float64), np.asarray(clusters)
    out = {}
    for c in np.unique(clusters):
        members = clusters == c
        filtered = int((members & (ifd < max_ifd)).sum())
        out[int(c)] = {"pool": int(members.sum()), "filtered": filtered, "kept": int(filtered * ratio)}
    return out


def random_select(pool_size: int, budget: int, seed: int = 0) -> np.ndarray:
    """`budget` distinct indices drawn uniformly (seeded)."""
    _check_budget(pool_size, budget)
    return np.random.default_rng(seed).choice(pool_size, size=budget, replace=False)


def top_ifd_select(ifd: np.ndarray, budget: int, max_ifd: float = 1.0) -> np.ndarray:
    """The `budget` highest-IFD samples of the whole pool among those with IFD < `max_ifd` (no clustering)."""
    ifd = np.asarray(ifd, dtype=np.float64)
    kept = np.flatnonzero(ifd < max_ifd)
    if budget > len(kept):
        raise ValueError(f"budget {budget} exceeds the {len(kept)} samples with IFD < {max_ifd}")
    return kept[np.argsort(-ifd[kept], kind="stable")][:budget]


def kcenter_select(embeddings: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """K-center greedy: start at a seeded random sample, then repeatedly add the sample farthest
    (cosine distance 1 − f·g) from everything selected so far."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    _check_budget(len(x), budget)
    first = int(np.random.default_rng(seed).integers(len(x)))
    chosen = [first]
    nearest = 1.0 - x @ x[first]
    nearest[first] = -math.inf
    for _ in range(budget - 1):
        nxt = int(torch.argmax(nearest))
        chosen.append(nxt)
        nearest = torch.minimum(nearest, 1.0 - x @ x[nxt])
        nearest[chosen] = -math.inf
    return np.asarray(chosen)


def centroid_loss(features: torch.Tensor, theta: torch.Tensor, tau: float = 0.07, balance: float = 1.0) -> torch.Tensor:
    """The distribution-consistent selection objective (mean over the given features).

        θ̂ = θ/‖θ‖,  c(i) = argmax_j f_i·θ̂_j,
        J = −(1/N) Σ_i log[ e^{f_i·θ̂_c(i)/τ} / ( e^{f_i·θ̂_c(i)/τ} + λ Σ_j e^{sg(θ̂_j)·θ̂_c(i)/τ} ) ]

    The first term pulls each centroid to its assigned samples (distribution matching); the sum, over all
    j including c(i), pushes the centroids apart (diversity). sg = stop-gradient.
    """
    theta_hat = F.normalize(theta, dim=1)
    sims = features @ theta_hat.T  # N × m
    assigned = sims.argmax(dim=1)
    positive = sims.gather(1, assigned[:, None]).squeeze(1) / tau
    centroid_sims = (theta_hat @ theta_hat.detach().T) / tau  # m × m; gradient only through the first factor
    negatives = centroid_sims[assigned] + math.log(balance)  # N × m
    log_denominator = torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1)
    return -(positive - log_denominator).mean()


def train_centroids(
    features: torch.Tensor,
    m: int,
    tau: float = 0.07,
    balance: float = 1.0,
    iterations: int = 300,
    lr: float = 1e-3,
    slice_size: int = 20_000,
    seed: int = 0,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise m centroids (initialised at m random samples' features) with Adam on the full batch.

    The full-batch gradient is accumulated over slices of `slice_size` samples (the paper's memory
    trick; the result equals one full-batch step). Returns the normalised centroids and the loss curve.
    """
    _check_budget(len(features), m)
    generator = torch.Generator().manual_seed(seed)
    init = torch.randperm(len(features), generator=generator)[:m]
    theta = features[init].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    curve = []
    n = len(features)
    for _ in range(iterations):
        optimizer.zero_grad()
        total = 0.0
        for start in range(0, n, slice_size):
            part = features[start : start + slice_size]
            loss = centroid_loss(part, theta, tau, balance) * (len(part) / n)
            loss.backward()
            total += loss.item()
        optimizer.step()
        curve.append(total)
    return F.normalize(theta.detach(), dim=1), curve


def nearest_unused(features: torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
    """For each centroid in order, the highest-dot-product sample not already taken: exactly m unique samples."""
    sims = features @ centroids.T  # N × m
    taken = torch.zeros(len(features), dtype=torch.bool)
    chosen = []
    for j in range(centroids.shape[0]):
        column = sims[:, j].masked_fill(taken, -math.inf)
        i = int(torch.argmax(column))
        taken[i] = True
        chosen.append(i)
    return np.asarray(chosen)


def distribution_select(
    embeddings: np.ndarray,
    budget: int,
    tau: float = 0.07,
    balance: float = 1.0,
    iterations: int = 300,
    lr: float = 1e-3,
    slice_size: int = 20_000,
    seed: int = 0,
) -> tuple[np.ndarray, list[float]]:
    """Distribution-consistent selection: train `budget` centroids, map each to its nearest unused sample."""
    features = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    centroids, curve = train_centroids(features, budget, tau, balance, iterations, lr, slice_size, seed)
    return nearest_unused(features, centroids), curve


def _check_budget(pool_size: int, budget: int) -> None:
    if not 1 <= budget <= pool_size:
        raise ValueError(f"budget must be in [1, {pool_size}] (pool size), got {budget}")
