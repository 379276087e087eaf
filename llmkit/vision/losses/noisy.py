"""BLDR (chenchenzong/BLDR, IJCAI-ECAI 2022 LMNL challenge entry): bidirectional learning with dynamic reweighting.

Two heads on one backbone. The positive-learning (PL) head is trained through a sparse
over-parameterisation (per-example parameters u_i, v_i absorb the label noise: u²⊙y can add mass to
the given label, v²⊙(1−y) accounts for mass the true class takes from it). The negative-learning (NL)
head learns "this example is NOT class k" for every class other than the given label and the head's
own current prediction, which is robust to wrong labels. The NL head's probability of the given label
then reweights every example: examples whose label the NL head doubts count less.

Not built: the three intermediate self-distillation branches, the consistency term between two
augmentations (no augmentation on digits) and the EMA evaluation model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.vision import VisionError
from llmkit.vision.gmm import min_max_normalise

_CLIP = 1 - 1e-4


def over_parameterised_probabilities(
    logits: torch.Tensor, onehot: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """q = normalise(clip(softmax(f) + clip(u²⊙y) − sg(clip(v²⊙(1−y))), min 1e-4)); v gets no gradient here."""
    extra = (u.pow(2) * onehot).clamp(0, _CLIP)
    missing = (v.pow(2) * (1 - onehot)).clamp(0, _CLIP).detach()
    q = (torch.softmax(logits, 1) + extra - missing).clamp(min=1e-4)
    return q / q.sum(1, keepdim=True)


def bldr_positive_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    noise_ratio: float = 0.0,
    ratio_reg: float = 50.0,
    balance_weight: float = 0.1,
) -> torch.Tensor:
    """BLDR's PL loss: weighted CE on q + ratio_reg·r²·MSE(onehot(argmax f) + sg(u²y) − v²(1−y), y)
    + balance_weight·(−Σ_k (1/K) log mean_i q_k)."""
    if logits.shape != u.shape or u.shape != v.shape:
        raise VisionError(
            f"logits, u and v must share a shape, got {tuple(logits.shape)}, {tuple(u.shape)}, {tuple(v.shape)}"
        )
    num_classes = logits.shape[1]
    y = F.one_hot(labels, num_classes).float()
    q = over_parameterised_probabilities(logits, y, u, v)
    w = torch.ones(len(labels)) if weights is None else weights
    ce = -(w * (y * torch.log(q)).sum(1)).mean()
    predicted = F.one_hot(logits.argmax(1), num_classes).float()
    reconstruction = predicted + (u.pow(2) * y).clamp(0, _CLIP).detach() - (v.pow(2) * (1 - y)).clamp(0, _CLIP)
    consistency = ratio_reg * noise_ratio**2 * F.mse_loss(reconstruction, y)
    balance = -torch.log(q.mean(0)).mean()
    return ce + consistency + balance_weight * balance


def complementary_targets(nl_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ȳ: 1 for every class except the given label and the NL head's current argmax."""
    targets = torch.ones_like(nl_logits)
    targets[torch.arange(len(labels)), labels] = 0
    targets[torch.arange(len(labels)), nl_logits.argmax(1)] = 0
    return targets


def bldr_negative_loss(nl_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None):
    """NL loss: −mean_i w_i Σ_k ȳ_ik log(1 − softmax(g)_ik)."""
    targets = complementary_targets(nl_logits.detach(), labels)
    log_not = torch.log((1 - torch.softmax(nl_logits, 1)).clamp(min=1e-7))
    w = torch.ones(len(labels)) if weights is None else weights
    return -(w * (targets * log_not).sum(1)).mean()


def nl_sample_weights(nl_logits: torch.Tensor, labels: torch.Tensor, doubt_threshold: float = 0.3):
    """Dynamic reweighting: w_i = min-max normalised NL-head probability of the given label; r = fraction
    of examples whose probability is below `doubt_threshold` (the estimated noise ratio)."""
    prob = torch.softmax(nl_logits, 1).gather(1, labels[:, None]).squeeze(1).detach()
    weights = torch.as_tensor(min_max_normalise(prob.numpy()), dtype=torch.float32)
    return weights, float((prob < doubt_threshold).float().mean())
