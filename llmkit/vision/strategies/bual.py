"""BUAL (Zong et al., ECCV 2024): bidirectional uncertainty for open-set annotation (the "B-LC" variant).

score = u_N + r·u_P (both min-max normalised over the pool; r = the previous round's query
precision, 0 in round 1), query the B *lowest*: uncertain under negative learning (not an unknown
pushed to a confident corner) and uncertain under positive learning (informative). Once unknowns
have been labelled, an auxiliary C+1-way classifier (the loop's "detector", plain CE) removes pool
examples it predicts as unknown and re-weights: score = a·u_N + r·(1−a)·u_P, a = normalised
P(unknown) from that classifier.
"""

from __future__ import annotations

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.gmm import min_max_normalise
from llmkit.vision.losses.evidential import CrossEntropy
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish


def bidirectional_scores(
    u_neg: np.ndarray, u_pos: np.ndarray, precision: float, unknown_prob: np.ndarray | None = None
) -> np.ndarray:
    """BUAL's B-LC score (lower = query first).

    Without an auxiliary classifier: norm(u_N) + r·norm(u_P). With one: a·norm(u_N) + r·(1−a)·norm(u_P),
    a = norm(P_aux(unknown)).
    """
    u_neg, u_pos = min_max_normalise(u_neg), min_max_normalise(u_pos)
    if u_neg.shape != u_pos.shape:
        raise VisionError(f"u_neg and u_pos differ in shape: {u_neg.shape} vs {u_pos.shape}")
    if unknown_prob is None:
        return u_neg + precision * u_pos
    a = min_max_normalise(unknown_prob)
    return a * u_neg + precision * (1 - a) * u_pos


class BUALSampling(QueryStrategy):
    """BUAL (B-LC). State: {"r": previous query precision}. Trains its own two-head "bual" model via the loop."""

    name = "bual"

    def __init__(
        self, num_known: int, pl_steps: int = 150, nl_steps: int = 150, check_every: int = 10, patience: int = 5
    ):
        self.num_known = num_known
        self.train_kwargs = dict(pl_steps=pl_steps, nl_steps=nl_steps, check_every=check_every, patience=patience)

    @property
    def requires(self) -> frozenset:
        """The PL/NL network, plus the auxiliary unknown classifier (used once unknowns exist)."""
        return frozenset({"bual", "detector"})

    def initial_state(self) -> dict:
        """r = 0 before the first query (no precision observed yet)."""
        return {"r": 0.0}

    def update_state(self, state: dict, query_precision: float) -> dict:
        """r ← the precision just observed."""
        return {**state, "r": float(query_precision)}

    def detector_loss(self, num_known: int):
        """The auxiliary classifier is plain CE over C+1 classes."""
        return CrossEntropy()

    def train_role(self, role: str, *, x, labelled_idx, labelled_y, pool_idx, budget: int, seed: int, hidden):
        """Train the "bual" role: PL then RLNL on labelled known examples + the pool (see loops.bual)."""
        from llmkit.vision.loops.bual import train_bual

        if role != "bual":
            raise VisionError(f"BUAL cannot train role {role!r}")
        known = np.asarray(labelled_y) >= 0
        return train_bual(
            x,
            np.asarray(labelled_idx)[known],
            np.asarray(labelled_y)[known],
            pool_idx,
            self.num_known,
            budget=budget,
            seed=seed,
            hidden=hidden,
            **self.train_kwargs,
        )

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
        """The `budget` lowest bidirectional scores among pool examples the aux classifier calls known."""
        pool_idx = check_query(pool_idx, budget)
        scores_model = scorer.get("bual")
        precision = float((state or {}).get("r", 0.0))
        has_unknowns = labelled_y is not None and (np.asarray(labelled_y) < 0).any()
        unknown_prob, keep = None, np.ones(pool_idx.size, dtype=bool)
        if has_unknowns:
            probs = torch.softmax(scorer.predict(pool_idx, "detector").logits, 1)
            unknown_prob = probs[:, self.num_known].numpy()
            keep = (probs.argmax(1) != self.num_known).numpy()
        score = bidirectional_scores(
            scores_model.u_neg[pool_idx], scores_model.u_pos[pool_idx], precision, unknown_prob
        )
        # Examples the aux classifier calls unknown go last (only used if too few known-looking remain).
        order = np.lexsort((score, ~keep))
        return finish(pool_idx, order[:budget], -score, return_utilities)
