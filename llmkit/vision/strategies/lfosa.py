"""LfOSA (Ning et al., CVPR 2022): query the pool examples most likely to be *known*, by max activation.

A C+1-way detector (trained with low-temperature CE, `TemperatureDetectorLoss`) gives each pool
example a max activation value v(x) = max_k h_k(x). Known examples have larger v than unknowns
predicted into the same class, so per predicted class a 2-component GMM on v separates them; the
score is the posterior of the higher-mean component, and examples predicted "unknown" score 0.
"""

from __future__ import annotations

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.gmm import two_gmm_posterior
from llmkit.vision.losses.openset import TemperatureDetectorLoss
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish, top_k_positions


def lfosa_utilities(detector_logits: torch.Tensor, num_known: int, seed: int = 0) -> np.ndarray:
    """Per-example P(known): per predicted known class, GMM posterior of the high-activation mode.

    Examples predicted as the unknown class (index C) get 0. A class with fewer than two distinct
    activations cannot be split and gets 0.5 (see `two_gmm_posterior`).
    """
    if detector_logits.dim() != 2 or detector_logits.shape[1] != num_known + 1:
        raise VisionError(
            f"LfOSA needs C+1 = {num_known + 1} detector logits per example, got shape {tuple(detector_logits.shape)}"
        )
    max_activation, predicted = detector_logits.max(1)
    max_activation, predicted = max_activation.numpy(), predicted.numpy()
    utilities = np.zeros(len(predicted))
    for c in range(num_known):
        members = np.flatnonzero(predicted == c)
        if members.size:
            # Raw activations (no min-max scaling), as in the reference: only the ordering within a class matters.
            utilities[members] = two_gmm_posterior(max_activation[members], "high", normalise=False, seed=seed)
    return utilities


class LfOSASampling(QueryStrategy):
    """Top-`budget` pool examples by `lfosa_utilities` (the detector's known-class posterior)."""

    name = "lfosa"
    requires = frozenset({"detector"})

    def __init__(self, num_known: int, known_temperature: float = 0.5, unknown_temperature: float = 0.5):
        self.num_known = num_known
        self.known_temperature, self.unknown_temperature = known_temperature, unknown_temperature

    def detector_loss(self, num_known: int):
        """LfOSA's detector is trained with temperature-scaled CE (T 0.5 for both sides, README command)."""
        return TemperatureDetectorLoss(num_known, self.known_temperature, self.unknown_temperature)

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
        """The pool examples the detector most confidently calls known."""
        pool_idx = check_query(pool_idx, budget)
        utilities = lfosa_utilities(scorer.predict(pool_idx, "detector").logits, self.num_known)
        return finish(pool_idx, top_k_positions(utilities, budget), utilities, return_utilities)
