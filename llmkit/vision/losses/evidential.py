"""DPC (Zong et al., AAAI 2024): Dirichlet-calibrated predictions and the evidential loss for noisy labels.

Softmax is translation invariant: adding a constant to every logit leaves it unchanged, so its
confidence says little under label noise. DPC puts the logits into a Dirichlet whose concentration
α_k = exp(f_k) + c has a constant c = 10/K added to the evidence; the constant breaks the invariance
(large positive logits now mean more confidence) and gives the calibrated probability α/S.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.vision import VisionError
from llmkit.vision.models import as_outputs

#: Logits are clamped here before exp(): exp(60) ≈ 1e26 is far from float32 overflow (≈3e38)
#: yet saturates every probability, so the clamp never changes a prediction.
_MAX_LOGIT = 60.0


def dirichlet_concentration(logits: torch.Tensor, evidence_offset: float | None = None) -> torch.Tensor:
    """α = exp(f) + c, with c = 10/K by default (DPC's constant)."""
    if logits.dim() != 2:
        raise VisionError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    offset = 10.0 / logits.shape[1] if evidence_offset is None else evidence_offset
    return torch.exp(logits.clamp(max=_MAX_LOGIT)) + offset


def calibrated_probabilities(logits: torch.Tensor, evidence_offset: float | None = None) -> torch.Tensor:
    """DPC's calibrated probability p̂ = α / Σα, used wherever softmax would be."""
    alpha = dirichlet_concentration(logits, evidence_offset)
    return alpha / alpha.sum(1, keepdim=True)


def dirichlet_kl_to_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """KL( Dir(α) ‖ Dir(1,…,1) ) per row, in closed form.

    = lnΓ(S) − lnΓ(K) − Σ lnΓ(α_k) + Σ (α_k − 1)(ψ(α_k) − ψ(S)),  S = Σ α_k.
    """
    num_classes = alpha.shape[1]
    total = alpha.sum(1)
    return (
        torch.lgamma(total)
        - torch.lgamma(alpha.new_tensor(float(num_classes)))
        - torch.lgamma(alpha).sum(1)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(total)[:, None])).sum(1)
    )


def _as_target_distribution(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels → one-hot; [N, K] probability targets pass through (for refined or mixed targets)."""
    if target.dim() == 1:
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise VisionError(f"integer labels expected, got dtype {target.dtype}")
        if target.numel() and (target.min() < 0 or target.max() >= num_classes):
            raise VisionError(f"labels must lie in [0, {num_classes - 1}]")
        return F.one_hot(target.long(), num_classes).float()
    if target.dim() == 2 and target.shape[1] == num_classes:
        return target.float()
    raise VisionError(f"target must be [N] labels or [N, {num_classes}] probabilities, got {tuple(target.shape)}")


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise VisionError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def dpc_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    kl_weight: float | None = None,
    evidence_offset: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """DPC's evidential loss: [log S − log α_y] + (0.5/K)·KL( Dir(α̃) ‖ Dir(1) ).

    α̃ = y + (1 − y)·(K/10)·α removes the labelled class's evidence and rescales the rest so that
    zero evidence gives α̃ = 1, i.e. the KL pulls the *other* classes towards "no evidence".
    `target` is integer labels or [N, K] probabilities (the first term is then Σ_k y_k(log S − log α_k)).
    """
    if logits.dim() != 2:
        raise VisionError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[0] != target.shape[0]:
        raise VisionError(f"logits has {logits.shape[0]} rows but target has {target.shape[0]}")
    num_classes = logits.shape[1]
    y = _as_target_distribution(target, num_classes)
    alpha = dirichlet_concentration(logits, evidence_offset)
    total = alpha.sum(1, keepdim=True)
    likelihood = (y * (torch.log(total) - torch.log(alpha))).sum(1)
    offset = 10.0 / num_classes if evidence_offset is None else evidence_offset
    alpha_tilde = y + (1 - y) * alpha / offset
    weight = 0.5 / num_classes if kl_weight is None else kl_weight
    return _reduce(likelihood + weight * dirichlet_kl_to_uniform(alpha_tilde), reduction)


def label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """m_i = f_{y_i} − max_{k≠y_i} f_k on raw logits: DPC's clean-sample score (large = agrees with label)."""
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise VisionError(
            f"label_margin needs logits [N, K] and labels [N], got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    given = logits.gather(1, labels[:, None].long()).squeeze(1)
    others = logits.scatter(1, labels[:, None].long(), float("-inf")).max(1).values
    return given - others


def edl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    annealing: float = 1.0,
    logit_clip: float = 10.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Evidential (Sensoy-style) loss as used by E2OAL's auxiliary head.

    α = exp(clip(f, −10, 10)) + 1, S = Σα; loss = Σ_k y_k (log S − log α_k) + annealing·KL( Dir(α̃) ‖ Dir(1) ),
    α̃ = y + (1 − y)·α (the target class's evidence removed). `annealing` = min(1, epoch/10) in the reference.
    """
    if logits.dim() != 2:
        raise VisionError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    y = _as_target_distribution(target, logits.shape[1])
    alpha = torch.exp(logits.clamp(-logit_clip, logit_clip)) + 1
    total = alpha.sum(1, keepdim=True)
    likelihood = (y * (torch.log(total) - torch.log(alpha))).sum(1)
    alpha_tilde = y + (1 - y) * alpha
    return _reduce(likelihood + annealing * dirichlet_kl_to_uniform(alpha_tilde), reduction)


class DPCLoss(nn.Module):
    """nn.Module twin of `dpc_loss`; accepts model `Outputs` or a logits tensor."""

    def __init__(self, kl_weight: float | None = None, evidence_offset: float | None = None, reduction: str = "mean"):
        super().__init__()
        self.kl_weight, self.evidence_offset, self.reduction = kl_weight, evidence_offset, reduction

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """Loss of head 0's logits against `target`."""
        return dpc_loss(
            as_outputs(outputs).logits,
            target,
            kl_weight=self.kl_weight,
            evidence_offset=self.evidence_offset,
            reduction=self.reduction,
        )


class CrossEntropy(nn.Module):
    """Plain cross-entropy on head 0, with the same (outputs, target) interface as the other losses."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of head 0's logits."""
        return F.cross_entropy(as_outputs(outputs).logits, target, reduction=self.reduction)
