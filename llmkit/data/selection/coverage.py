"""Coverage diagnostics of a selection: does the subset look like the pool it came from?"""

from __future__ import annotations

import numpy as np
import torch


def mean_nearest_selected_similarity(embeddings: np.ndarray, selected: np.ndarray, chunk: int = 8192) -> float:
    """Mean over the pool of the cosine similarity to the closest selected sample (higher = better covered)."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    s = x[torch.as_tensor(np.asarray(selected), dtype=torch.long)]
    best = [(x[i : i + chunk] @ s.T).max(dim=1).values for i in range(0, len(x), chunk)]
    return float(torch.cat(best).mean())


def cluster_histogram_kl(clusters: np.ndarray, selected: np.ndarray, pseudo_count: float = 1e-3) -> float:
    """KL(P_pool ‖ P_selected) of the cluster histograms, in nats (lower = more distribution-consistent).

    P_selected gets `pseudo_count` added to every cluster's count so a missed cluster costs a large but
    finite amount: q_c = (n_c + a) / (n + a·K).
    """
    clusters = np.asarray(clusters)
    k = int(clusters.max()) + 1
    p = np.bincount(clusters, minlength=k).astype(np.float64)
    p /= p.sum()
    counts = np.bincount(clusters[np.asarray(selected, dtype=np.int64)], minlength=k).astype(np.float64)
    q = (counts + pseudo_count) / (counts.sum() + pseudo_count * k)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def coverage_report(embeddings: np.ndarray, clusters: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """Both coverage measures plus the subset size."""
    return {
        "selected": int(len(selected)),
        "mean_nearest_selected_cosine": mean_nearest_selected_similarity(embeddings, selected),
        "cluster_kl": cluster_histogram_kl(clusters, selected),
    }
