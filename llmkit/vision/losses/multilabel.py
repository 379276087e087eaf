"""Multi-label losses: ASL, CAP's class-prior pseudo-labels, and L2D's label-wise embedding distillation.

CAP (Xie et al., NeurIPS 2023): in semi-supervised multi-label learning a single 0.5 threshold
produces far too few positives for rare classes; CAP instead thresholds each class so that its
pseudo-positive rate equals the class prior estimated from the labelled set.

L2D (Yang, Xie et al., ICCV 2023): multi-label KD with one-vs-all logit distillation (MLD) plus
distillation of the *structure* of label-wise embeddings — pairwise distances among a class's
positive instances (CD) and among an instance's positive labels (ID).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmkit.vision import VisionError
from llmkit.vision.losses.distill import binary_kl


def asymmetric_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    weight: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """ASL (Ridnik et al.), summed over entries: −[y(1−p)^γ⁺ log p + (1−y) p_m^γ⁻ log(1 − p_m)], p_m = max(p − clip, 0).

    The shifted, focused negative term stops the many easy negatives of multi-label data from
    dominating. `weight` (same shape, e.g. CAP's confidence mask) multiplies each entry.
    """
    if logits.shape != target.shape:
        raise VisionError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    p = torch.sigmoid(logits)
    p_shifted = (p - clip).clamp(min=0) if clip > 0 else p
    positive = target * (1 - p).pow(gamma_pos) * torch.log(p.clamp(min=eps))
    negative = (1 - target) * p_shifted.pow(gamma_neg) * torch.log((1 - p_shifted).clamp(min=eps))
    loss = -(positive + negative)
    return (loss if weight is None else loss * weight).sum()


def cap_pseudo_labels(
    probs: torch.Tensor, class_prior: torch.Tensor, *, rho_pos: float = 1.0, rho_neg: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAP's class-distribution-aware pseudo-labels and confidence mask for unlabelled probabilities [n_u, K].

    Per class k: τ_k = the (γ_k·n_u)-th largest probability; pseudo-label 1[p ≥ τ_k], so the positive
    rate matches the prior γ_k. Mask keeps the top ρ⁺·γ_k·n_u entries (confident positives) and the
    bottom ρ⁻·(1−γ_k)·n_u (confident negatives); ρ⁻ is capped at 0.998 as in the reference.
    Counts are rounded to the nearest integer.
    """
    if probs.dim() != 2 or class_prior.shape != (probs.shape[1],):
        raise VisionError(
            f"probs must be [n, K] and class_prior [K], got {tuple(probs.shape)}, {tuple(class_prior.shape)}"
        )
    if ((class_prior < 0) | (class_prior > 1)).any():
        raise VisionError("class priors must lie in [0, 1]")
    n = probs.shape[0]
    rho_neg = min(rho_neg, 0.998)
    # rank[i, k] = position of p_ik in class k sorted descending (0 = largest)
    rank = torch.empty_like(probs, dtype=torch.long)
    rank.scatter_(0, probs.argsort(0, descending=True), torch.arange(n)[:, None].expand_as(probs).contiguous())
    num_pos = torch.round(class_prior * n).long()
    pseudo = (rank < num_pos[None, :]).float()
    keep_pos = rank < torch.round(rho_pos * class_prior * n).long()[None, :]
    keep_neg = rank >= n - torch.round(rho_neg * (1 - class_prior) * n).long()[None, :]
    return pseudo, (keep_pos | keep_neg).float()


def fixed_threshold_pseudo_labels(probs: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline: pseudo-label 1[p ≥ threshold] for every class, every entry kept."""
    return (probs >= threshold).float(), torch.ones_like(probs)


def cdcr_weights(probs: torch.Tensor, candidates: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """CDCR (Sun, Xie, Huang, arXiv 2207.02410) curriculum weights for partial multi-label learning.

    Non-candidate entries are certain negatives (weight 1); a candidate entry is trusted as a positive
    only once the model is confident in it (p ≥ α = 0.6, weight 1), otherwise ignored (weight 0) —
    easy candidates first, the ambiguous ones later as confidence grows.
    """
    if probs.shape != candidates.shape:
        raise VisionError(f"probs {tuple(probs.shape)} and candidates {tuple(candidates.shape)} differ in shape")
    is_candidate = candidates > 0
    return torch.where(is_candidate, (probs >= threshold).float(), torch.ones_like(probs))


def add_false_candidates(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Partial multi-label candidates: every true positive, plus each negative entry with probability `rate`."""
    if not 0 <= rate <= 1:
        raise VisionError(f"false-candidate rate must be in [0, 1], got {rate}")
    labels = np.asarray(labels)
    return np.maximum(labels, (rng.random(labels.shape) < rate).astype(labels.dtype))


def flip_multilabel(labels: np.ndarray, rho_pos, rho_neg, rng: np.random.Generator) -> np.ndarray:
    """Class-conditional multi-label noise: a true 1 is observed as 0 with probability ρ⁺_k, a true 0 as 1
    with probability ρ⁻_k (scalars or one rate per label)."""
    labels = np.asarray(labels)
    rho_pos = np.broadcast_to(np.asarray(rho_pos, dtype=np.float64), labels.shape[1:])
    rho_neg = np.broadcast_to(np.asarray(rho_neg, dtype=np.float64), labels.shape[1:])
    draw = rng.random(labels.shape)
    flip = np.where(labels > 0, draw < rho_pos, draw < rho_neg)
    return np.where(flip, 1 - labels, labels).astype(labels.dtype)


def ccmn_unbiased_bce(
    logits: torch.Tensor, observed: torch.Tensor, rho_pos, rho_neg, reduction: str = "sum"
) -> torch.Tensor:
    """CCMN's first estimator (Xie & Huang, arXiv 2105.07338): per-label backward-corrected BCE.

    With ρ⁺ = P(observed 0 | true 1) and ρ⁻ = P(observed 1 | true 0) per label,
    ℓ̃(f, 1) = [(1−ρ⁻)ℓ(f, 1) − ρ⁺ℓ(f, 0)] / (1−ρ⁺−ρ⁻),  ℓ̃(f, 0) = [(1−ρ⁺)ℓ(f, 0) − ρ⁻ℓ(f, 1)] / (1−ρ⁺−ρ⁻),
    whose expectation over the label noise is the clean BCE (unbiased). The second estimator of the paper is
    not built (its form was not retrievable).
    """
    if logits.shape != observed.shape:
        raise VisionError(f"logits {tuple(logits.shape)} and labels {tuple(observed.shape)} differ in shape")
    rho_pos = torch.as_tensor(rho_pos, dtype=logits.dtype).expand(logits.shape[1:])
    rho_neg = torch.as_tensor(rho_neg, dtype=logits.dtype).expand(logits.shape[1:])
    if ((rho_pos + rho_neg) >= 1).any():
        raise VisionError("CCMN needs ρ⁺ + ρ⁻ < 1 for every label")
    loss_pos = F.softplus(-logits)  # ℓ(f, 1) = −log σ(f)
    loss_neg = F.softplus(logits)  # ℓ(f, 0) = −log(1 − σ(f))
    corrected_pos = ((1 - rho_neg) * loss_pos - rho_pos * loss_neg) / (1 - rho_pos - rho_neg)
    corrected_neg = ((1 - rho_pos) * loss_neg - rho_neg * loss_pos) / (1 - rho_pos - rho_neg)
    per_entry = torch.where(observed > 0, corrected_pos, corrected_neg)
    return per_entry.sum() if reduction == "sum" else per_entry.mean() if reduction == "mean" else per_entry


def multilabel_logit_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MLD: Σ_k KL( Bern(σ(t_k)) ‖ Bern(σ(s_k)) ), mean over the batch (BinaryKL at T = 1)."""
    return binary_kl(student, teacher, 1.0)


def structural_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """ψ(E): pairwise Euclidean distances of the rows of E [n, d], divided by the mean positive distance.

    Scale-free: ψ(cE) = ψ(E), so only the *shape* of the set is distilled.
    """
    sq = embeddings.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * embeddings @ embeddings.T).clamp(min=eps).sqrt()
    dist = dist * (1 - torch.eye(len(embeddings)))  # exact zeros on the diagonal (clamp left √eps there)
    positive = dist[dist > 0]
    return dist / positive.mean() if positive.numel() else dist


def structure_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Σ smooth-L1(ψ(E_S), ψ(E_T)) / n for one set of n embeddings; the teacher side carries no gradient."""
    with torch.no_grad():
        target = structural_distances(teacher)
    return F.smooth_l1_loss(structural_distances(student), target, reduction="sum") / len(student)


def grouped_structure_loss(
    student: torch.Tensor, teacher: torch.Tensor, members: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Σ over groups with ≥ 2 members of `structure_loss` on that group's member embeddings, vectorised.

    student, teacher: [G, M, d] (group g's candidate members); members: [G, M] bool. Equal to looping
    `structure_loss(student[g, members[g]], teacher[g, members[g]])` over groups, without the loop.
    """
    members = members.bool()
    pair = members[:, :, None] & members[:, None, :]
    pair = pair & ~torch.eye(members.shape[1], dtype=torch.bool)[None]
    counts = members.sum(1)
    used = counts > 1
    if not used.any():
        return student.new_zeros(())
    student, teacher, pair, counts = student[used], teacher[used], pair[used], counts[used]

    def normalised(emb):
        sq = emb.pow(2).sum(-1)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * emb @ emb.transpose(1, 2)).clamp(min=eps).sqrt()
        dist = dist * pair  # only distances between members; the rest (and the diagonal) are 0
        positive = (dist > 0) & pair
        mean = (dist * positive).sum((1, 2)) / positive.sum((1, 2)).clamp(min=1)
        return dist / mean.clamp(min=eps)[:, None, None]

    with torch.no_grad():
        target = normalised(teacher)
    per_entry = F.smooth_l1_loss(normalised(student), target, reduction="none") * pair
    return (per_entry.sum((1, 2)) / counts).sum()


def class_aware_distillation(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """CD: for each class with ≥ 2 positive instances, the structure loss among those instances' embeddings; summed."""
    return grouped_structure_loss(student_emb.transpose(0, 1), teacher_emb.transpose(0, 1), targets.T > 0)


def instance_aware_distillation(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """ID: for each instance with ≥ 2 positive labels, the structure loss among its positive labels'
    embeddings; summed."""
    return grouped_structure_loss(student_emb, teacher_emb, targets > 0)


class L2DLoss(nn.Module):
    """BCE(sum) + λ_logits·MLD + λ_le·(λ_cd·CD + λ_id·ID); defaults from the reference COCO config (10, 1, 100, 1000).

    forward(student Outputs, targets, teacher Outputs): `features` must be label-wise embeddings [N, K, d]
    (see `models.LabelWiseMLP`). Set the λs to 0 to get the BCE or BCE+MLD baselines.
    """

    def __init__(
        self,
        logits_weight: float = 10.0,
        embedding_weight: float = 1.0,
        cd_weight: float = 100.0,
        id_weight: float = 1000.0,
    ):
        super().__init__()
        self.logits_weight, self.embedding_weight = logits_weight, embedding_weight
        self.cd_weight, self.id_weight = cd_weight, id_weight

    def forward(self, student, targets: torch.Tensor, teacher) -> torch.Tensor:
        """Total L2D loss for one batch."""
        if student.features.dim() != 3 and self.embedding_weight:
            raise VisionError("L2D embedding terms need label-wise embeddings [N, K, d] in outputs.features")
        loss = F.binary_cross_entropy_with_logits(student.logits, targets, reduction="sum")
        if self.logits_weight:
            loss = loss + self.logits_weight * multilabel_logit_distillation(student.logits, teacher.logits)
        if self.embedding_weight and (self.cd_weight or self.id_weight):
            le = self.cd_weight * class_aware_distillation(student.features, teacher.features, targets)
            le = le + self.id_weight * instance_aware_distillation(student.features, teacher.features, targets)
            loss = loss + self.embedding_weight * le
        return loss


def mean_average_precision(scores, targets) -> float:
    """Macro mAP (%) over classes with at least one positive (scikit-learn's average precision)."""
    from sklearn.metrics import average_precision_score

    scores, targets = np.asarray(scores), np.asarray(targets)
    present = targets.sum(0) > 0
    if not present.any():
        raise VisionError("no class has a positive example: mAP is undefined")
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro") * 100)


__all__ = [
    "L2DLoss",
    "add_false_candidates",
    "asymmetric_loss",
    "cap_pseudo_labels",
    "ccmn_unbiased_bce",
    "cdcr_weights",
    "flip_multilabel",
    "class_aware_distillation",
    "fixed_threshold_pseudo_labels",
    "grouped_structure_loss",
    "instance_aware_distillation",
    "mean_average_precision",
    "multilabel_logit_distillation",
    "structural_distances",
    "structure_loss",
]
