"""DCFS (Wang, Zong, Xie, Huang, arXiv 2409.17607): Dirichlet-based coarse-to-fine example selection.

Built from the abstract's design sketch only (docs/methods/vision-active-learning.md §5); the paper's exact formulas and
code were not available, so the standard evidential definitions below were chosen:

- Each of two heads gives a Dirichlet α = exp(f) + c with DPC's constant c = 10/K (breaks softmax's
  translation invariance), S = Σα, p̂ = α/S.
- Data (aleatoric) uncertainty: the Dirichlet's expected entropy
  E_{p~Dir(α)}[H(p)] = Σ_k (α_k/S)·(ψ(S+1) − ψ(α_k+1)).
- Distribution (epistemic) uncertainty: the mutual information H(p̂) − E[H(p)] (Malinin & Gales).
- Head discrepancy: the L1 distance Σ_k |p̂¹_k − p̂²_k| between the two heads' calibrated probabilities.
- Coarse stage: min-max-normalised data + distribution uncertainty (both high for unknowns); keep the
  ⌈ratio·B⌉ lowest as likely-known candidates. Fine stage: top B candidates by head discrepancy.
The training side (discrepancy reduced on known, amplified on queried unknowns) is in losses.openset
(`head_discrepancy_loss`) and loops.dcfs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.losses.evidential import dirichlet_concentration
from llmkit.vision.losses.openset import head_discrepancy
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish


def _check_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Reject anything that is not an [N, K] tensor of positive concentrations."""
    if alpha.dim() != 2 or alpha.shape[1] < 2:
        raise VisionError(f"alpha must be [N, K] with K >= 2, got shape {tuple(alpha.shape)}")
    if not bool((alpha > 0).all()):
        raise VisionError("Dirichlet concentrations must be positive")
    return alpha


def data_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """Expected entropy of p ~ Dir(α): Σ_k (α_k/S)(ψ(S+1) − ψ(α_k+1)) per row (aleatoric part)."""
    alpha = _check_alpha(alpha)
    total = alpha.sum(1, keepdim=True)
    return ((alpha / total) * (torch.digamma(total + 1) - torch.digamma(alpha + 1))).sum(1)


def distribution_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """Mutual information H(α/S) − E[H(p)] per row: high when the evidence is small (epistemic part)."""
    alpha = _check_alpha(alpha)
    mean = alpha / alpha.sum(1, keepdim=True)
    return -(mean * torch.log(mean)).sum(1) - data_uncertainty(alpha)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] so the two uncertainties weigh equally (constant input -> zeros)."""
    span = values.max() - values.min()
    return np.zeros_like(values) if span <= 0 else (values - values.min()) / span


def dcfs_select_positions(
    data_u: np.ndarray, dist_u: np.ndarray, discrepancy: np.ndarray, budget: int, candidate_ratio: float = 2.0
) -> np.ndarray:
    """Coarse: the ⌈ratio·B⌉ lowest normalised data + distribution uncertainty; fine: top B by discrepancy."""
    data_u, dist_u, discrepancy = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (data_u, dist_u, discrepancy))
    if not data_u.size == dist_u.size == discrepancy.size:
        raise VisionError("uncertainties and discrepancy must have one value per pool example")
    if candidate_ratio < 1:
        raise VisionError(f"candidate_ratio must be >= 1, got {candidate_ratio}")
    if budget < 1 or budget > data_u.size:
        raise VisionError(f"budget {budget} must be in [1, {data_u.size}]")
    size = min(data_u.size, math.ceil(candidate_ratio * budget))
    coarse = _min_max(data_u) + _min_max(dist_u)
    candidates = np.argsort(coarse, kind="stable")[:size]
    return candidates[np.argsort(-discrepancy[candidates], kind="stable")[:budget]]


class DCFSSampling(QueryStrategy):
    """DCFS. Stateless; trains its own "dcfs" two-head evidential model through the loop (loops.dcfs)."""

    name = "dcfs"
    requires = frozenset({"dcfs"})

    def __init__(
        self,
        num_known: int,
        candidate_ratio: float = 2.0,
        evidence_offset: float | None = None,
        discrepancy_weight: float = 1.0,
    ):
        self.num_known, self.candidate_ratio = num_known, candidate_ratio
        self.evidence_offset, self.discrepancy_weight = evidence_offset, discrepancy_weight

    def initial_state(self) -> dict:
        """No adaptive knobs."""
        return {}

    def train_role(self, role: str, *, x, labelled_idx, labelled_y, pool_idx, budget: int, seed: int, hidden):
        """Evidential loss on known rows of both heads, no-evidence loss on unknowns, discrepancy loss."""
        from llmkit.vision.loops.dcfs import train_dcfs

        if role != "dcfs":
            raise VisionError(f"DCFS cannot train role {role!r}")
        return train_dcfs(
            x,
            np.asarray(labelled_idx),
            np.asarray(labelled_y),
            self.num_known,
            seed=seed,
            hidden=hidden,
            evidence_offset=self.evidence_offset,
            discrepancy_weight=self.discrepancy_weight,
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
        """Coarse (head-averaged Dirichlet uncertainties) then fine (head discrepancy)."""
        pool_idx = check_query(pool_idx, budget)
        out = scorer.predict(pool_idx, "dcfs")
        alphas = [dirichlet_concentration(h, self.evidence_offset) for h in out.heads[:2]]
        alpha = (alphas[0] + alphas[1]) / 2  # both heads' evidence, so neither head alone decides "known"
        data_u, dist_u = data_uncertainty(alpha).numpy(), distribution_uncertainty(alpha).numpy()
        discrepancy = head_discrepancy(
            alphas[0] / alphas[0].sum(1, keepdim=True), alphas[1] / alphas[1].sum(1, keepdim=True)
        ).numpy()
        positions = dcfs_select_positions(data_u, dist_u, discrepancy, budget, self.candidate_ratio)
        return finish(pool_idx, positions, discrepancy, return_utilities)
