"""Metrics shared by the tasks."""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), computed as a stable product.

    n samples, c of them correct. k must not exceed n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct_per_problem: list[list[bool]], ks: list[int]) -> dict[str, float]:
    """Mean pass@k over problems for each k ≤ n (n = samples per problem, the same for all)."""
    if not correct_per_problem:
        raise ValueError("no problems to score")
    n = len(correct_per_problem[0])
    if any(len(c) != n for c in correct_per_problem):
        raise ValueError("every problem needs the same number of samples")
    return {f"pass@{k}": float(np.mean([pass_at_k(n, sum(c), k) for c in correct_per_problem])) for k in ks if k <= n}
