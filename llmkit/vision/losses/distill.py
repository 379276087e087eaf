"""Logit distillation: softmax KD, BinaryKL, and DHKD's BinaryKL-Norm with a dual head and gradient alignment.

DHKD (Yang et al., arXiv 2411.08937) observes that adding a per-class (binary) KL to CE on the *same*
linear classifier makes their gradients conflict; it moves the binary loss to an auxiliary head on
the shared backbone (inference uses head 0) and, optionally, projects the distillation gradient off
the CE gradient when they point in opposite directions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.vision import VisionError
from llmkit.vision.models import as_outputs


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 2:
        raise VisionError(
            f"student and teacher logits must both be [N, K], got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def class_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL( softmax(p/T) ‖ softmax(q/T) ) over the class dimension (dim 1), one value per row: [N, K] → [N],
    [B, K, H, W] → [B, H, W] (computed in place along dim 1, so pixels need no reshaping)."""
    log_p, log_q = F.log_softmax(p_logits / temperature, 1), F.log_softmax(q_logits / temperature, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: T²·KL( softmax(t/T) ‖ softmax(s/T) ), summed over classes, mean over the batch."""
    _check_pair(student, teacher)
    return temperature**2 * class_kl(teacher, student, temperature).mean()


def binary_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """BinaryKL: T²/N Σ_i Σ_k KL( Bern(σ(t_ik/T)) ‖ Bern(σ(s_ik/T)) ) — each class as a yes/no question."""
    _check_pair(student, teacher)
    t, s = teacher / temperature, student / temperature
    p = torch.sigmoid(t)
    # log σ(x) = −softplus(−x) and log(1 − σ(x)) = −softplus(x): stable for large |x|.
    kl = p * (F.softplus(-s) - F.softplus(-t)) + (1 - p) * (F.softplus(s) - F.softplus(t))
    return temperature**2 * kl.sum(1).mean()


def binary_kl_norm(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """BinaryKL-Norm (DHKD): T²/N Σ_i Σ_k KL( Bern(½) ‖ Bern(σ((s_ik − t_ik)/T)) ).

    Zero exactly when s = t; per element it equals ½(softplus(x) + softplus(−x)) − log 2, x = (s−t)/T,
    so it only sees the logit *difference* and pushes it to 0.
    """
    _check_pair(student, teacher)
    x = (student - teacher) / temperature
    kl = 0.5 * (F.softplus(x) + F.softplus(-x)) - math.log(2.0)
    return temperature**2 * kl.sum(1).mean()


def project_conflicting(task_grad: torch.Tensor, aux_grad: torch.Tensor) -> torch.Tensor:
    """DHKD gradient alignment: if aux·task < 0, drop aux's component along task (else return aux).

    g_aux ← g_aux − (g_aux·g_task / ‖g_task‖²)·g_task, so the result never opposes the task gradient.
    """
    if task_grad.shape != aux_grad.shape:
        raise VisionError(f"gradient shapes differ: {tuple(task_grad.shape)} vs {tuple(aux_grad.shape)}")
    dot = torch.dot(task_grad.flatten(), aux_grad.flatten())
    norm_sq = task_grad.pow(2).sum()
    if dot >= 0 or norm_sq == 0:
        return aux_grad
    return aux_grad - (dot / norm_sq) * task_grad


class LossParts(NamedTuple):
    """A loss split into the task term (CE on labels) and the auxiliary term (distillation).

    Loops need the parts separately for gradient alignment; `total` is their sum.
    """

    task: torch.Tensor
    aux: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """task + aux."""
        return self.task + self.aux


DISTILL_MODES = ("ce", "kd", "binary_kl", "dhkd", "dhkd+kd")


def distillation_parts(
    outputs,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mode: str = "dhkd",
    labelled_mask: torch.Tensor | None = None,
    kd_temperature: float = 4.0,
    binary_temperature: float = 2.0,
    ce_weight: float = 1.0,
    aux_weight: float = 1.0,
    kd_weight: float = 1.0,
) -> LossParts:
    """Task and distillation terms for one of `DISTILL_MODES`.

    ce:        CE on head 0 (labelled rows only); no distillation.
    kd:        CE + kd_weight·softmax-KD on head 0.
    binary_kl: CE + aux_weight·BinaryKL, both on head 0 (the "same head" setting DHKD argues against).
    dhkd:      CE on head 0 + aux_weight·BinaryKL-Norm on head 1 (the reference "dhkd" mode).
    dhkd+kd:   CE + kd_weight·KD on head 0 + aux_weight·BinaryKL-Norm on head 1.
    CE uses rows where `labelled_mask` is True (all rows if None); distillation uses every row.
    """
    if mode not in DISTILL_MODES:
        raise VisionError(f"unknown distillation mode {mode!r}; choose one of {', '.join(DISTILL_MODES)}")
    outputs = as_outputs(outputs)
    head0 = outputs.logits
    mask = torch.ones(head0.shape[0], dtype=torch.bool) if labelled_mask is None else labelled_mask
    task = ce_weight * F.cross_entropy(head0[mask], labels[mask]) if mask.any() else head0.sum() * 0
    aux = head0.new_zeros(())
    if mode in ("kd", "dhkd+kd"):
        aux = aux + kd_weight * kd_loss(head0, teacher_logits, kd_temperature)
    if mode == "binary_kl":
        aux = aux + aux_weight * binary_kl(head0, teacher_logits, binary_temperature)
    if mode in ("dhkd", "dhkd+kd"):
        if len(outputs.heads) < 2:
            raise VisionError(f"mode {mode!r} needs a model with an auxiliary head (num_heads=2)")
        aux = aux + aux_weight * binary_kl_norm(outputs.heads[1], teacher_logits, binary_temperature)
    return LossParts(task, aux)


class DualHeadDistillLoss(nn.Module):
    """nn.Module twin of `distillation_parts`: forward returns `LossParts` (use `.total` to backprop)."""

    def __init__(
        self,
        mode: str = "dhkd",
        kd_temperature: float = 4.0,
        binary_temperature: float = 2.0,
        ce_weight: float = 1.0,
        aux_weight: float = 1.0,
        kd_weight: float = 1.0,
    ):
        super().__init__()
        if mode not in DISTILL_MODES:
            raise VisionError(f"unknown distillation mode {mode!r}; choose one of {', '.join(DISTILL_MODES)}")
        self.mode = mode
        self.kwargs = dict(
            kd_temperature=kd_temperature,
            binary_temperature=binary_temperature,
            ce_weight=ce_weight,
            aux_weight=aux_weight,
            kd_weight=kd_weight,
        )

    def forward(
        self, outputs, labels: torch.Tensor, teacher_logits: torch.Tensor, labelled_mask: torch.Tensor | None = None
    ) -> LossParts:
        """Task (CE) and distillation parts for this loss's mode."""
        return distillation_parts(
            outputs, labels, teacher_logits, mode=self.mode, labelled_mask=labelled_mask, **self.kwargs
        )


class BinaryKLNormLoss(nn.Module):
    """nn.Module twin of `binary_kl_norm` (applied to a given head, default head 1)."""

    def __init__(self, temperature: float = 2.0, head: int = 1):
        super().__init__()
        self.temperature, self.head = temperature, head

    def forward(self, outputs, teacher_logits: torch.Tensor) -> torch.Tensor:
        """BinaryKL-Norm between the chosen head and the teacher logits."""
        outputs = as_outputs(outputs)
        if self.head >= len(outputs.heads):
            raise VisionError(f"model has {len(outputs.heads)} head(s); head {self.head} requested")
        return binary_kl_norm(outputs.heads[self.head], teacher_logits, self.temperature)


# -- RDD (relative difficulty distillation): per sample ([N, K] + [N]) or per pixel ([B, K, H, W] + [B, H, W]) ---
# Pixels are rows: every per-row quantity is computed along the class dimension (dim 1) of either layout and has
# the target's shape, so the per-pixel loss equals the per-sample loss on the valid pixels taken as rows.

#: Label of pixels that no loss or metric sees (the segmentation convention, e.g. Pascal VOC's boundaries).
IGNORE_INDEX = 255


def valid_targets(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Check a (logits, target) pair and return (labels, valid), both shaped like target.

    logits [N, K] need target [N]; logits [B, K, H, W] need target [B, H, W]. `valid` is target != ignore_index;
    every valid label must lie in [0, K). `labels` is target with ignored rows set to 0 (so gathers and
    `F.cross_entropy` stay in range): mask its results with `valid`.
    """
    if logits.dim() not in (2, 4):
        raise VisionError(f"logits must be [N, K] or [B, K, H, W], got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != tuple(expected):
        raise VisionError(
            f"target must be {'[N]' if logits.dim() == 2 else '[B, H, W]'} matching logits "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    valid = target != ignore_index
    labels = target.long().masked_fill(~valid, 0)
    if valid.any() and (labels[valid].min() < 0 or labels[valid].max() >= logits.shape[1]):
        raise VisionError(
            f"target labels must lie in [0, {logits.shape[1] - 1}] or equal ignore_index "
            f"{ignore_index}, got range [{int(labels[valid].min())}, {int(labels[valid].max())}]"
        )
    return labels, valid


def _check_same(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise VisionError(f"{name} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def teacher_disagreement_weights(teacher_main: torch.Tensor, teacher_aux: torch.Tensor) -> torch.Tensor:
    """RDD stage 1: w = exp(−KL(softmax(t_aux) ‖ softmax(t_main))) per example ([N, K] → [N]) or per pixel
    ([B, K, H, W] → [B, H, W]) — what the teacher's two heads agree on (easy for the teacher) counts more."""
    _check_same("teacher heads", teacher_main, teacher_aux)
    if teacher_main.dim() not in (2, 4):
        raise VisionError(f"logits must be [N, K] or [B, K, H, W], got {tuple(teacher_main.shape)}")
    return torch.exp(-class_kl(teacher_aux, teacher_main))


def hard_example_mask(
    logits: torch.Tensor,
    target: torch.Tensor,
    threshold: float = 0.7,
    min_kept: int = 0,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """OHEM-style: an example / pixel is hard if its true-class probability ≤ τ, where τ is raised to the
    `min_kept`-th smallest true-class probability among the *valid* rows when that is larger (so at least
    min_kept valid rows are hard). Returns a bool mask shaped like target; ignored rows are never hard."""
    labels, valid = valid_targets(logits, target, ignore_index)
    prob = torch.softmax(logits, 1).gather(1, labels.unsqueeze(1)).squeeze(1)
    if min_kept > 0 and valid.any():
        valid_prob = prob[valid]
        threshold = max(threshold, float(valid_prob.kthvalue(min(min_kept, len(valid_prob))).values))
    return valid & (prob <= threshold)


def masked_kd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """`kd_loss` averaged over the valid rows only (target != ignore_index), for [N, K] or [B, K, H, W] logits;
    0 when nothing is valid."""
    _check_same("student and teacher logits", student, teacher)
    _, valid = valid_targets(student, target, ignore_index)
    if not valid.any():
        return student.sum() * 0
    return temperature**2 * class_kl(teacher, student, temperature)[valid].mean()


def rdd_loss(
    student: torch.Tensor,
    teacher_main: torch.Tensor,
    teacher_aux: torch.Tensor,
    target: torch.Tensor,
    *,
    stage: int,
    threshold: float = 0.7,
    min_kept: int = 0,
    kd_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """RDD student loss over the valid examples / pixels (target != ignore_index): KD (T = 1, mean over valid
    rows) always, plus
    stage 1: CE weighted by `teacher_disagreement_weights` (mean over valid rows);
    stage 2: CE only on rows hard for exactly one of student / teacher (XOR of `hard_example_mask`, min_kept
             counted over valid rows), averaged over those.
    Logits are [N, K] with target [N], or [B, K, H, W] with target [B, H, W]; per pixel it equals the per-sample
    loss on the valid pixels taken as rows. With no valid rows the loss is 0 (still differentiable)."""
    if stage not in (1, 2):
        raise VisionError(f"RDD stage must be 1 or 2, got {stage!r}")
    _check_same("student and teacher logits", student, teacher_main)
    _check_same("teacher heads", teacher_main, teacher_aux)
    labels, valid = valid_targets(student, target, ignore_index)
    if not valid.any():
        return student.sum() * 0
    per_row = F.cross_entropy(student, labels, reduction="none")
    if stage == 1:
        ce = (teacher_disagreement_weights(teacher_main, teacher_aux).detach() * per_row)[valid].mean()
    else:
        hard = lambda logits: hard_example_mask(logits, target, threshold, min_kept, ignore_index=ignore_index)
        xor = hard(student.detach()) ^ hard(teacher_main)
        ce = per_row[xor].mean() if xor.any() else per_row.sum() * 0
    return ce + kd_weight * masked_kd(student, teacher_main, target, ignore_index=ignore_index)
