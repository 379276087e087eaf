"""One-shot active learning with ℓp Lewis weights for several models at once (Huang, Li, Sun, Tang, ICLR 2024).

Each model m sees the pool through its own feature map A^(m) (n × d_m) and will fit a linear head.
Lewis weights measure how much each row matters to any linear fit on A^(m) (p = 2: leverage scores).
Sampling each example with probability ∝ max_m w_i^(m), then fitting every head by importance-weighted
regression on one-hot targets, serves all M models from one labelled set, queried all at once.
Pure numpy; the scorer is not used (the strategy is given its feature maps).
"""

from __future__ import annotations

import numpy as np

from llmkit.vision import VisionError
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish


def leverage_scores(features: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """τ_i = a_iᵀ (AᵀA + ridge·I)⁻¹ a_i (ℓ2 Lewis weights); Σ τ_i = rank(A) when ridge = 0."""
    a = np.asarray(features, dtype=np.float64)
    gram = a.T @ a + ridge * np.eye(a.shape[1])
    return np.einsum("ij,ij->i", a @ np.linalg.pinv(gram), a)


def lewis_weights(features: np.ndarray, p: float = 2.0, iterations: int = 20, ridge: float = 1e-8) -> np.ndarray:
    """ℓp Lewis weights by the fixed point w_i ← (a_iᵀ (Aᵀ W^{1−2/p} A)⁻¹ a_i)^{p/2}, from w = 1.

    The iteration converges for p < 4; p = 2 returns the leverage scores directly.
    """
    if not 0 < p < 4:
        raise VisionError(f"Lewis weights need 0 < p < 4 for the fixed-point iteration, got p={p}")
    a = np.asarray(features, dtype=np.float64)
    if p == 2:
        return leverage_scores(a, ridge)
    w = np.ones(len(a))
    for _ in range(iterations):
        scale = w ** (1 - 2 / p)
        gram = (a * scale[:, None]).T @ a + ridge * np.eye(a.shape[1])
        w = np.maximum(np.einsum("ij,ij->i", a @ np.linalg.pinv(gram), a), 0) ** (p / 2)
    return w


def multi_model_sampling_probabilities(feature_sets, budget: int, p: float = 2.0) -> np.ndarray:
    """q_i = min(1, B · s_i / Σ s), s_i = max_m w_i^(m) (Lewis weights of each model's features)."""
    scores = np.max(np.stack([lewis_weights(f, p) for f in feature_sets]), axis=0)
    if scores.sum() <= 0:
        raise VisionError("all Lewis weights are zero: the feature maps carry no information")
    return np.minimum(1.0, budget * scores / scores.sum())


def sample_without_replacement(probabilities: np.ndarray, budget: int, rng: np.random.Generator):
    """Exactly `budget` distinct positions drawn ∝ probabilities (sequential, Efraimidis–Spirakis keys),
    with importance weights 1/q_i for the regression."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    keys = rng.random(len(probabilities)) ** (1.0 / np.maximum(probabilities, 1e-300))
    chosen = np.argsort(-keys, kind="stable")[:budget]
    return chosen, 1.0 / np.maximum(probabilities[chosen], 1e-12)


def weighted_least_squares_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    sample_weights: np.ndarray | None = None,
    ridge: float = 1e-3,
) -> np.ndarray:
    """Linear head V minimising Σ_i s_i ‖a_i V − onehot(y_i)‖² + ridge‖V‖² (the p = 2 regression)."""
    a = np.asarray(features, dtype=np.float64)
    s = np.ones(len(a)) if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
    targets = np.eye(num_classes)[np.asarray(labels)]
    lhs = (a * s[:, None]).T @ a + ridge * np.eye(a.shape[1])
    return np.linalg.solve(lhs, (a * s[:, None]).T @ targets)


class LewisOneShot(QueryStrategy):
    """Query `budget` pool examples at once by max-over-models Lewis weights. `feature_sets` are the M
    feature maps over *all* rows (indexed by the pool indices)."""

    name = "lewis"
    requires = frozenset()

    def __init__(self, feature_sets, p: float = 2.0):
        if not feature_sets:
            raise VisionError("LewisOneShot needs at least one feature map")
        self.feature_sets, self.p = [np.asarray(f) for f in feature_sets], p

    def select(
        self,
        pool_idx,
        budget,
        *,
        scorer=None,
        labelled_idx=None,
        labelled_y=None,
        state=None,
        rng=None,
        return_utilities=False,
    ):
        """Sample the pool ∝ max_m Lewis weight; utilities are the sampling probabilities."""
        pool_idx = check_query(pool_idx, budget)
        if rng is None:
            raise VisionError("LewisOneShot samples: pass an rng")
        q = multi_model_sampling_probabilities([f[pool_idx] for f in self.feature_sets], budget, self.p)
        positions, _ = sample_without_replacement(q, budget, rng)
        return finish(pool_idx, positions, q, return_utilities)
