"""Detector losses for open-set active learning.

A detector has C+1 outputs: the C known classes and one "unknown" class (index C) for the pool
examples the oracle answered "unknown". LfOSA trains it with temperature-scaled CE; EAOA adds an
energy-margin term so known examples get low (very negative) energy and unknowns high energy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.vision import VisionError
from llmkit.vision.losses.evidential import _reduce
from llmkit.vision.models import as_outputs


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """Free energy E(x) = −logsumexp_k f_k(x) over the given logits (lower = more "known")."""
    if logits.dim() != 2:
        raise VisionError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    return -torch.logsumexp(logits, dim=1)


def energy_margin_loss(
    logits: torch.Tensor, target: torch.Tensor, num_known: int, *, margin_in: float = -25.0, margin_out: float = -7.0
) -> torch.Tensor:
    """EAOA's energy regulariser: mean(relu(E_in − m_in)²) + mean(relu(m_out − E_out)²).

    E is computed on the C known-class logits only; "in" rows have target < C, "out" rows target == C.
    A side with no rows contributes 0 (before any unknown is labelled there is no "out" side).
    """
    energy = energy_score(logits[:, :num_known])
    is_out = target == num_known
    terms = logits.new_zeros(())
    if (~is_out).any():
        terms = terms + F.relu(energy[~is_out] - margin_in).pow(2).mean()
    if is_out.any():
        terms = terms + F.relu(margin_out - energy[is_out]).pow(2).mean()
    return terms


def eaoa_detector_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_known: int,
    *,
    energy_weight: float = 0.01,
    margin_in: float = -25.0,
    margin_out: float = -7.0,
) -> torch.Tensor:
    """EAOA detector objective: CE over C+1 classes + λ_E·energy margin (λ_E 0.01, m_in −25, m_out −7).

    Before any unknown has been labelled, the reference trains with plain CE; the margin term is
    then skipped here too.
    """
    if logits.shape[1] != num_known + 1:
        raise VisionError(f"detector logits must have C+1 = {num_known + 1} columns, got {logits.shape[1]}")
    ce = F.cross_entropy(logits, target)
    if not (target == num_known).any():
        return ce
    return ce + energy_weight * energy_margin_loss(
        logits, target, num_known, margin_in=margin_in, margin_out=margin_out
    )


def temperature_cross_entropy(logits: torch.Tensor, target: torch.Tensor, temperature, reduction: str = "mean"):
    """CE on logits / T with a per-example (or scalar) temperature T: LfOSA's detector loss.

    A low temperature (T = 0.5) sharpens the softmax, so training drives the *max activation* of
    known examples up — the value LfOSA later splits with a GMM.
    """
    temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    if (temperature <= 0).any():
        raise VisionError("temperatures must be positive")
    scaled = logits / (temperature[:, None] if temperature.dim() == 1 else temperature)
    return F.cross_entropy(scaled, target, reduction=reduction)


class EnergyDetectorLoss(nn.Module):
    """nn.Module twin of `eaoa_detector_loss` (target class C means "unknown")."""

    def __init__(self, num_known: int, energy_weight: float = 0.01, margin_in: float = -25.0, margin_out: float = -7.0):
        super().__init__()
        self.num_known, self.energy_weight = num_known, energy_weight
        self.margin_in, self.margin_out = margin_in, margin_out

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """Loss of head 0's C+1 logits."""
        return eaoa_detector_loss(
            as_outputs(outputs).logits,
            target,
            self.num_known,
            energy_weight=self.energy_weight,
            margin_in=self.margin_in,
            margin_out=self.margin_out,
        )


class TemperatureDetectorLoss(nn.Module):
    """LfOSA's detector loss: CE with T_known for known rows and T_unknown for rows labelled C."""

    def __init__(
        self, num_known: int, known_temperature: float = 0.5, unknown_temperature: float = 0.5, reduction: str = "mean"
    ):
        super().__init__()
        self.num_known, self.reduction = num_known, reduction
        self.known_temperature, self.unknown_temperature = known_temperature, unknown_temperature

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled CE of head 0's C+1 logits."""
        logits = as_outputs(outputs).logits
        temps = torch.where(
            target == self.num_known, torch.tensor(self.unknown_temperature), torch.tensor(self.known_temperature)
        ).to(logits.dtype)
        return temperature_cross_entropy(logits, target, temps, self.reduction)


def complementary_label_loss(
    logits: torch.Tensor, complementary: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Negative learning: −log(1 − p_c̄) for a complementary label c̄ ("this example is NOT class c̄").

    Used by BUAL's negative-learning head and BLDR's NL head.
    """
    prob = torch.softmax(logits, 1).gather(1, complementary[:, None].long()).squeeze(1)
    return _reduce(-torch.log((1 - prob).clamp_min(1e-7)), reduction)


# -- DCFS: two-head discrepancy -------------------------------------------------------------------


def head_discrepancy(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Per-row L1 distance Σ_k |p¹_k − p²_k| between two heads' probabilities (in [0, 2])."""
    if p1.shape != p2.shape or p1.dim() != 2:
        raise VisionError(
            f"head probabilities must be two equal [N, K] tensors, got {tuple(p1.shape)} and {tuple(p2.shape)}"
        )
    return (p1 - p2).abs().sum(1)


def head_discrepancy_loss(p1: torch.Tensor, p2: torch.Tensor, is_unknown: torch.Tensor) -> torch.Tensor:
    """DCFS-style discrepancy term: mean discrepancy on known rows − mean on unknown rows.

    Minimising it reduces the heads' disagreement on known classes and amplifies it on unknowns
    (the abstract's sketch; the paper's exact form is not available). An empty group contributes 0.
    """
    d = head_discrepancy(p1, p2)
    is_unknown = torch.as_tensor(is_unknown, dtype=torch.bool)
    if is_unknown.shape != d.shape:
        raise VisionError(f"is_unknown must have one flag per row ({d.shape[0]}), got {tuple(is_unknown.shape)}")
    known_term = d[~is_unknown].mean() if (~is_unknown).any() else d.new_zeros(())
    unknown_term = d[is_unknown].mean() if is_unknown.any() else d.new_zeros(())
    return known_term - unknown_term
