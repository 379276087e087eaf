"""E2OAL (Zong et al., arXiv 2603.07898): clustered unknowns, an evidential auxiliary head, purity × informativeness.

1. Unknown structure: k-means on frozen features of the labelled set (known + labelled unknowns),
   K chosen by ternary search maximising the "F1 product"; clusters not matched (Hungarian) to a
   known class become unknown sub-classes, which label the queried unknowns for training.
2. Model (trained by `loops.e2oal`): backbone + base head (C, CE on known) + auxiliary head
   (C + #sub-classes, evidential loss).
3. Purity: margin m = max_{k<C} aux_k − max_{k≥C} aux_k; 3-component GMM over labelled + pool
   margins; P(known) = posterior of the highest-mean component.
4. Informativeness: U = JS(p, onehot(argmax p)) × JS(p, uniform) on the base head — high for
   "partially ambiguous yet not flat".
5. Candidate size L: the smallest k ≥ B such that top-k by P(known) then top-B by U has expected
   precision Σ P(known)/B ≤ π_t; per predicted class keep top ⌈L/C⌉ by margin then top ⌈B/C⌉ by U.
   π_t ← clip(π_t + (π* − observed precision), 0, 1), π* = 0.6.

Deviation: the reference uses frozen CLIP features; here any frozen features (default: PCA of pixels).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish

# -- unknown structure ----------------------------------------------------------------------------


def match_clusters(cluster_ids: np.ndarray, labels: np.ndarray, num_known: int, num_clusters: int) -> dict[int, int]:
    """Hungarian matching of clusters to known classes (labels < 0 are unknowns): {cluster: known class}."""
    from scipy.optimize import linear_sum_assignment

    counts = np.zeros((num_known, num_clusters))
    for c, y in zip(cluster_ids, labels):
        if y >= 0:
            counts[y, c] += 1
    rows, cols = linear_sum_assignment(-counts)
    return {int(c): int(r) for r, c in zip(rows, cols) if counts[r, c] > 0}


def f1_product(cluster_ids: np.ndarray, labels: np.ndarray, num_known: int, num_clusters: int) -> float:
    """√(macro F1 over known classes × F1 of unknown-vs-known) for a clustering of the labelled set.

    A point's prediction is its cluster's matched known class, or "unknown" for unmatched clusters.
    """
    matched = match_clusters(cluster_ids, labels, num_known, num_clusters)
    predicted = np.array([matched.get(int(c), -1) for c in cluster_ids])

    def f1(pred_pos, true_pos):
        tp = np.sum(pred_pos & true_pos)
        return 0.0 if tp == 0 else 2 * tp / (pred_pos.sum() + true_pos.sum())

    known_f1 = np.mean([f1(predicted == k, labels == k) for k in range(num_known)])
    if not (labels < 0).any():
        return float(known_f1)
    return float(math.sqrt(known_f1 * f1(predicted < 0, labels < 0)))


def _kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points can make sklearn warn about fewer distinct clusters
        return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(features)


def estimate_unknown_clusters(
    features: np.ndarray, labels: np.ndarray, num_known: int, *, max_clusters: int = 1000, seed: int = 0
) -> tuple[int, np.ndarray]:
    """Ternary search K ∈ [C+1, min(max_clusters, n)] for the best F1 product; returns (K, sub-class per row).

    (With n < C+1 labelled rows the range degenerates to K = n.)

    Sub-class per row: −1 for rows in clusters matched to a known class, otherwise 0..S−1 numbering the
    unmatched clusters. Labelled unknowns that fell into a matched cluster get the nearest unmatched
    centroid's sub-class (so every labelled unknown has a training label); with no unmatched cluster
    they all share sub-class 0.
    """
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    n = len(features)
    if n != len(labels):
        raise VisionError("features and labels differ in length")
    # K ∈ [C+1, n]; with fewer labelled rows than C+1 the only possible clusterings have K ≤ n.
    lo = min(num_known + 1, n)
    hi = max(lo, min(max_clusters, n))
    cache: dict[int, tuple[float, np.ndarray]] = {}

    def score(k):
        if k not in cache:
            ids = _kmeans(features, k, seed)
            cache[k] = (f1_product(ids, labels, num_known, k), ids)
        return cache[k][0]

    while hi - lo > 2:  # integer ternary search (the F1 product is assumed unimodal in K, as in the reference)
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if score(m1) < score(m2):
            lo = m1 + 1
        else:
            hi = m2 - 1
    best_k = max(range(lo, hi + 1), key=score)
    ids = cache[best_k][1]
    matched = match_clusters(ids, labels, num_known, best_k)
    unmatched = sorted(set(range(best_k)) - set(matched))
    sub_of_cluster = {c: i for i, c in enumerate(unmatched)}
    sub = np.array([sub_of_cluster.get(int(c), -1) for c in ids])
    stray = (labels < 0) & (sub < 0)
    if stray.any():
        if unmatched:
            centroids = np.stack([features[ids == c].mean(0) for c in unmatched])
            nearest = ((features[stray][:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
            sub[stray] = nearest
        else:
            sub[stray] = 0
    return best_k, sub


# -- scores and selection -------------------------------------------------------------------------


def known_unknown_margin(aux_logits: torch.Tensor, num_known: int) -> torch.Tensor:
    """m(x) = max over known columns − max over unknown sub-class columns of the auxiliary head."""
    if aux_logits.shape[1] <= num_known:
        raise VisionError(f"auxiliary head needs > C = {num_known} columns, got {aux_logits.shape[1]}")
    return aux_logits[:, :num_known].max(1).values - aux_logits[:, num_known:].max(1).values


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence per row (natural log), 0·log 0 = 0."""
    m = 0.5 * (p + q)

    def kl(a, b):
        return torch.where(
            a > 0, a * (torch.log(a.clamp_min(1e-12)) - torch.log(b.clamp_min(1e-12))), torch.zeros_like(a)
        ).sum(1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def e2oal_informativeness(base_logits: torch.Tensor) -> torch.Tensor:
    """U = JS(p, onehot(argmax p)) × JS(p, uniform), p = softmax(base head)."""
    p = torch.softmax(base_logits, 1)
    onehot = torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return js_divergence(p, onehot) * js_divergence(p, uniform)


def three_gmm_known_posterior(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Posterior of the highest-mean component of a 3-component 1-D GMM (E2OAL's purity score)."""
    from sklearn.mixture import GaussianMixture

    values = np.asarray(values, dtype=np.float64)
    if np.unique(values).size < 3:
        return np.full(values.shape, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm = GaussianMixture(3, random_state=seed, reg_covar=1e-4).fit(values[:, None])
    return gmm.predict_proba(values[:, None])[:, int(np.argmax(gmm.means_[:, 0]))]


def candidate_size(p_known: np.ndarray, informativeness: np.ndarray, budget: int, target_precision: float) -> int:
    """Smallest L ≥ B whose top-L-by-purity, then top-B-by-informativeness pick has mean P(known) ≤ π_t.

    Returns the pool size when no L reaches the target (the pool is purer than asked).
    """
    order = np.argsort(-p_known, kind="stable")
    for size in range(budget, len(p_known) + 1):
        candidates = order[:size]
        chosen = candidates[np.argsort(-informativeness[candidates], kind="stable")[:budget]]
        if p_known[chosen].mean() <= target_precision:
            return size
    return len(p_known)


def e2oal_select_positions(
    margin: np.ndarray, informativeness: np.ndarray, predicted_class: np.ndarray, budget: int, num_known: int, size: int
) -> np.ndarray:
    """Per predicted class: top ⌈L/C⌉ by margin, then top ⌈B/C⌉ by informativeness; truncated to B, filled
    by the highest margins among the rest if classes run short."""
    per_class_candidates, per_class = math.ceil(size / num_known), math.ceil(budget / num_known)
    chosen = []
    for c in range(num_known):
        members = np.flatnonzero(predicted_class == c)
        candidates = members[np.argsort(-margin[members], kind="stable")[:per_class_candidates]]
        chosen.extend(candidates[np.argsort(-informativeness[candidates], kind="stable")[:per_class]])
    chosen = np.array(chosen, dtype=np.int64)
    chosen = chosen[np.argsort(-informativeness[chosen], kind="stable")][:budget]
    if chosen.size < budget:
        rest = np.setdiff1d(np.arange(margin.size), chosen)
        chosen = np.concatenate([chosen, rest[np.argsort(-margin[rest], kind="stable")][: budget - chosen.size]])
    return chosen


def update_target_precision(target: float, observed: float, goal: float = 0.6) -> float:
    """π_t ← clip(π_t + (π* − π_observed), 0, 1)."""
    return float(min(1.0, max(0.0, target + (goal - observed))))


class E2OALSampling(QueryStrategy):
    """E2OAL. State: {"target_precision": π_t}. Trains its own "e2oal" two-head model through the loop."""

    name = "e2oal"
    requires = frozenset({"e2oal"})

    def __init__(self, num_known: int, features=None, goal_precision: float = 0.6, feature_dim: int = 32):
        self.num_known, self.goal_precision = num_known, goal_precision
        self.frozen_features, self.feature_dim = features, feature_dim

    def initial_state(self) -> dict:
        """π_t starts at the goal π* = 0.6."""
        return {"target_precision": self.goal_precision}

    def update_state(self, state: dict, query_precision: float) -> dict:
        """Move π_t by the gap between the goal and the observed precision."""
        return {
            **state,
            "target_precision": update_target_precision(
                state.get("target_precision", self.goal_precision), query_precision, self.goal_precision
            ),
        }

    def _frozen(self, x: torch.Tensor) -> np.ndarray:
        """Frozen, L2-normalised features for clustering (PCA of the inputs unless given)."""
        if self.frozen_features is None:
            from sklearn.decomposition import PCA

            flat = x.flatten(1).numpy().astype(np.float64)
            self.frozen_features = PCA(min(self.feature_dim, flat.shape[1]), random_state=0).fit_transform(flat)
        f = np.asarray(self.frozen_features, dtype=np.float64)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def train_role(self, role: str, *, x, labelled_idx, labelled_y, pool_idx, budget: int, seed: int, hidden):
        """Cluster the labelled set, then train the base + evidential auxiliary heads (see loops.e2oal)."""
        from llmkit.vision.loops.e2oal import train_e2oal

        if role != "e2oal":
            raise VisionError(f"E2OAL cannot train role {role!r}")
        labelled_idx, labelled_y = np.asarray(labelled_idx), np.asarray(labelled_y)
        _, sub = estimate_unknown_clusters(self._frozen(x)[labelled_idx], labelled_y, self.num_known, seed=seed)
        aux_target = np.where(labelled_y >= 0, labelled_y, self.num_known + np.maximum(sub, 0))
        return train_e2oal(x, labelled_idx, labelled_y, aux_target, self.num_known, seed=seed, hidden=hidden)

    def select(
        self,
        pool_idx,
        budget,
        *,
        scorer,
        labelled_idx=None,
        labelled_y=None,
        state=None,
        rng=None,
        return_utilities=False,
    ):
        """Purity (3-GMM on aux margins) then informativeness (JS product), with adaptive candidate size."""
        pool_idx = check_query(pool_idx, budget)
        target_precision = (state or {}).get("target_precision", self.goal_precision)
        pool_out = scorer.predict(pool_idx, "e2oal")
        margin = known_unknown_margin(pool_out.heads[1], self.num_known).numpy()
        reference = margin
        if labelled_idx is not None and len(labelled_idx):
            labelled_margin = known_unknown_margin(scorer.predict(labelled_idx, "e2oal").heads[1], self.num_known)
            reference = np.concatenate([margin, labelled_margin.numpy()])
        p_known = three_gmm_known_posterior(reference)[: len(pool_idx)]
        informativeness = e2oal_informativeness(pool_out.heads[0]).numpy()
        size = candidate_size(p_known, informativeness, budget, target_precision)
        predicted = pool_out.heads[1][:, : self.num_known].argmax(1).numpy()
        positions = e2oal_select_positions(margin, informativeness, predicted, budget, self.num_known, size)
        return finish(pool_idx, positions, p_known, return_utilities)
