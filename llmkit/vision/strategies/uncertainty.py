"""Closed-set baselines: random sampling and uncertainty sampling (entropy / least confident / margin)."""

from __future__ import annotations

import torch

from llmkit.vision import VisionError
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish, top_k_positions


def entropy_utility(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_k p_k log p_k per row (0·log 0 taken as 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)


def least_confidence_utility(probs: torch.Tensor) -> torch.Tensor:
    """1 − max_k p_k per row."""
    return 1 - probs.max(1).values


def margin_utility(probs: torch.Tensor) -> torch.Tensor:
    """−(p_top1 − p_top2) per row (a small margin between the two best classes = uncertain)."""
    top2 = probs.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


UNCERTAINTY_MEASURES = {
    "entropy": entropy_utility,
    "least_confident": least_confidence_utility,
    "margin": margin_utility,
}


class RandomSampling(QueryStrategy):
    """Uniform random subset of the pool (needs no model)."""

    name = "random"
    requires = frozenset()

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
        """`budget` pool indices drawn without replacement from `rng`."""
        pool_idx = check_query(pool_idx, budget)
        if rng is None:
            raise VisionError("RandomSampling needs an rng (numpy Generator) so runs are reproducible")
        positions = rng.choice(pool_idx.size, budget, replace=False)
        return finish(pool_idx, positions, None, return_utilities)


class UncertaintySampling(QueryStrategy):
    """Top-`budget` pool examples by the target classifier's uncertainty (softmax over C known classes)."""

    requires = frozenset({"target"})

    def __init__(self, measure: str = "entropy"):
        if measure not in UNCERTAINTY_MEASURES:
            raise VisionError(f"unknown uncertainty measure {measure!r}; choose one of {sorted(UNCERTAINTY_MEASURES)}")
        self.measure = measure
        self.name = measure

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
        """The most uncertain pool examples first."""
        pool_idx = check_query(pool_idx, budget)
        probs = torch.softmax(scorer.predict(pool_idx, "target").logits, 1)
        utilities = UNCERTAINTY_MEASURES[self.measure](probs).numpy()
        return finish(pool_idx, top_k_positions(utilities, budget), utilities, return_utilities)
