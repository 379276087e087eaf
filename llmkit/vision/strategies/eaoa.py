"""EAOA (Zong & Huang, CVPR 2025): energy-based epistemic + aleatoric uncertainty for open-set annotation.

Two stages. Purity: an epistemic score from the C+1-way detector (model EU: energy of the known
logits plus softplus of the unknown logit) and, optionally, from the labelled data (data EU: how
often each pool example is among the nearest neighbours of labelled examples of each class, put
through the same energy formula); each is turned into P(known) by a 2-GMM and the two multiplied.
Informativeness: the target classifier's aleatoric uncertainty AU = log(1 − p_max). Per predicted
class, keep the k1·⌈B/C⌉ purest candidates, then the ⌈B/C⌉ most uncertain of those. k1 adapts to
the observed query precision so that precision hovers around π* = 0.6.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.vision import VisionError
from llmkit.vision.gmm import two_gmm_posterior
from llmkit.vision.losses.openset import EnergyDetectorLoss
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish


def model_epistemic_uncertainty(detector_logits: torch.Tensor, num_known: int) -> torch.Tensor:
    """EU_m(x) = −logsumexp_{k<C} h_k(x) + softplus(h_C(x)); high = likely unknown."""
    if detector_logits.dim() != 2 or detector_logits.shape[1] != num_known + 1:
        raise VisionError(f"EAOA needs C+1 = {num_known + 1} detector logits, got {tuple(detector_logits.shape)}")
    return -torch.logsumexp(detector_logits[:, :num_known], 1) + F.softplus(detector_logits[:, num_known])


def data_epistemic_uncertainty(
    pool_features: torch.Tensor,
    labelled_features: torch.Tensor,
    labelled_classes: torch.Tensor,
    num_known: int,
    k: int = 250,
) -> torch.Tensor:
    """EU_d: reverse-nearest-neighbour counts through the energy formula.

    Each labelled example (classes 0..C-1, and C for labelled unknowns) picks its k most
    cosine-similar pool examples; count[i, c] = how many class-c labelled examples picked pool
    example i, divided by (class-c size / mean known-class size) so big classes do not dominate.
    EU_d = −logsumexp_{c<C} count[:, c] + softplus(count[:, C]).
    """
    if labelled_features.shape[0] != labelled_classes.shape[0]:
        raise VisionError("labelled_features and labelled_classes differ in length")
    pool = F.normalize(pool_features, dim=1)
    labelled = F.normalize(labelled_features, dim=1)
    k = min(k, pool.shape[0])
    neighbours = (labelled @ pool.T).topk(k, dim=1).indices  # [L, k]
    counts = torch.zeros(pool.shape[0], num_known + 1)
    for c in range(num_known + 1):
        rows = neighbours[labelled_classes == c].reshape(-1)
        counts[:, c] = torch.bincount(rows, minlength=pool.shape[0]).float()
    class_sizes = torch.bincount(labelled_classes.long(), minlength=num_known + 1).float()
    mean_known = class_sizes[:num_known][class_sizes[:num_known] > 0].mean()
    scale = torch.where(class_sizes > 0, class_sizes / mean_known, torch.ones_like(class_sizes))
    counts = counts / scale
    return -torch.logsumexp(counts[:, :num_known], 1) + F.softplus(counts[:, num_known])


def aleatoric_uncertainty(target_logits: torch.Tensor) -> torch.Tensor:
    """AU(x) = −logsumexp_k g_k + logsumexp_{k≠ŷ} g_k = log(1 − p_max): high = ambiguous among known classes."""
    top = target_logits.argmax(1, keepdim=True)
    others = target_logits.scatter(1, top, float("-inf"))
    return -torch.logsumexp(target_logits, 1) + torch.logsumexp(others, 1)


def eaoa_select_positions(
    p_known: np.ndarray,
    informativeness: np.ndarray,
    predicted_class: np.ndarray,
    budget: int,
    num_known: int,
    k1: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """EAOA's two-stage rule, over pool positions.

    For each predicted class c: keep the top k1·⌈B/C⌉ by p_known, then the top ⌈B/C⌉ of those by
    informativeness; shuffle the union and truncate to B. If some classes have too few members to
    fill B, the rest is filled by highest p_known among the unchosen (our addition, so a round
    always spends its budget).
    """
    per_class = math.ceil(budget / num_known)
    chosen = []
    for c in range(num_known):
        members = np.flatnonzero(predicted_class == c)
        candidates = members[np.argsort(-p_known[members], kind="stable")[: k1 * per_class]]
        chosen.extend(candidates[np.argsort(-informativeness[candidates], kind="stable")[:per_class]])
    chosen = np.array(chosen, dtype=np.int64)
    chosen = chosen[rng.permutation(chosen.size)][:budget]
    if chosen.size < budget:
        rest = np.setdiff1d(np.arange(p_known.size), chosen)
        rest = rest[np.argsort(-p_known[rest], kind="stable")][: budget - chosen.size]
        chosen = np.concatenate([chosen, rest])
    return chosen


def update_candidate_multiplier(
    k1: int, precision: float, target: float = 0.6, tolerance: float = 0.05, step: int = 1
) -> int:
    """EAOA's adaptive k1: widen the candidate set when precision is above target (room to seek
    informative examples), narrow it when below (be purer); unchanged within ±tolerance."""
    if abs(precision - target) <= tolerance:
        return k1
    return k1 + step if precision > target else max(1, k1 - step)


class EAOASampling(QueryStrategy):
    """EAOA query strategy. State: {"k1": candidate multiplier}, adapted after every round."""

    name = "eaoa"
    requires = frozenset({"target", "detector"})

    def __init__(
        self,
        num_known: int,
        initial_k1: int = 5,
        target_precision: float = 0.6,
        tolerance: float = 0.05,
        step: int = 1,
        use_data_uncertainty: bool = True,
        neighbours: int = 250,
    ):
        self.num_known, self.initial_k1 = num_known, initial_k1
        self.target_precision, self.tolerance, self.step = target_precision, tolerance, step
        self.use_data_uncertainty, self.neighbours = use_data_uncertainty, neighbours

    def initial_state(self) -> dict:
        """k1 = 5 before the first round (paper default)."""
        return {"k1": self.initial_k1}

    def update_state(self, state: dict, query_precision: float) -> dict:
        """Move k1 towards the precision target."""
        k1 = update_candidate_multiplier(
            state.get("k1", self.initial_k1), query_precision, self.target_precision, self.tolerance, self.step
        )
        return {**state, "k1": k1}

    def detector_loss(self, num_known: int):
        """CE + 0.01·energy margin (m_in −25, m_out −7)."""
        return EnergyDetectorLoss(num_known)

    def p_known(self, pool_idx, scorer, labelled_idx, labelled_y) -> np.ndarray:
        """P(known) per pool example: GMM posteriors of the low-EU mode, model EU × data EU."""
        detector_out = scorer.predict(pool_idx, "detector")
        eu_model = model_epistemic_uncertainty(detector_out.logits, self.num_known).numpy()
        p_known = two_gmm_posterior(eu_model, "low")
        if self.use_data_uncertainty and labelled_idx is not None and len(labelled_idx):
            labelled_y = np.asarray(labelled_y)
            classes = torch.as_tensor(np.where(labelled_y < 0, self.num_known, labelled_y))
            labelled_features = scorer.predict(np.asarray(labelled_idx), "detector").features
            eu_data = data_epistemic_uncertainty(
                detector_out.features, labelled_features, classes, self.num_known, self.neighbours
            ).numpy()
            p_known = p_known * two_gmm_posterior(eu_data, "low")
        return p_known

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
        """Purity-then-informativeness selection; utilities returned are P(known)."""
        pool_idx = check_query(pool_idx, budget)
        if rng is None:
            raise VisionError("EAOASampling needs an rng (it shuffles the per-class picks)")
        k1 = (state or {}).get("k1", self.initial_k1)
        p_known = self.p_known(pool_idx, scorer, labelled_idx, labelled_y)
        target_logits = scorer.predict(pool_idx, "target").logits
        au_posterior = two_gmm_posterior(aleatoric_uncertainty(target_logits).numpy(), "high")
        predicted = target_logits.argmax(1).numpy()
        positions = eaoa_select_positions(p_known, au_posterior, predicted, budget, self.num_known, k1, rng)
        return finish(pool_idx, positions, p_known, return_utilities)
