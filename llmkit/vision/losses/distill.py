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
        raise VisionError(f"student and teacher logits must both be [N, K], got {tuple(student.shape)} "
                          f"and {tuple(teacher.shape)}")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: T²·KL( softmax(t/T) ‖ softmax(s/T) ), summed over classes, mean over the batch."""
    _check_pair(student, teacher)
    log_p_teacher = F.log_softmax(teacher / temperature, 1)
    log_p_student = F.log_softmax(student / temperature, 1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)
    return temperature ** 2 * kl.mean()


def binary_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """BinaryKL: T²/N Σ_i Σ_k KL( Bern(σ(t_ik/T)) ‖ Bern(σ(s_ik/T)) ) — each class as a yes/no question."""
    _check_pair(student, teacher)
    t, s = teacher / temperature, student / temperature
    p = torch.sigmoid(t)
    # log σ(x) = −softplus(−x) and log(1 − σ(x)) = −softplus(x): stable for large |x|.
    kl = p * (F.softplus(-s) - F.softplus(-t)) + (1 - p) * (F.softplus(s) - F.softplus(t))
    return temperature ** 2 * kl.sum(1).mean()


def binary_kl_norm(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """BinaryKL-Norm (DHKD): T²/N Σ_i Σ_k KL( Bern(½) ‖ Bern(σ((s_ik − t_ik)/T)) ).

    Zero exactly when s = t; per element it equals ½(softplus(x) + softplus(−x)) − log 2, x = (s−t)/T,
    so it only sees the logit *difference* and pushes it to 0.
    """
    _check_pair(student, teacher)
    x = (student - teacher) / temperature
    kl = 0.5 * (F.softplus(x) + F.softplus(-x)) - math.log(2.0)
    return temperature ** 2 * kl.sum(1).mean()


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


def distillation_parts(outputs, labels: torch.Tensor, teacher_logits: torch.Tensor, *, mode: str = "dhkd",
                       labelled_mask: torch.Tensor | None = None, kd_temperature: float = 4.0,
                       binary_temperature: float = 2.0, ce_weight: float = 1.0, aux_weight: float = 1.0,
                       kd_weight: float = 1.0) -> LossParts:
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

    def __init__(self, mode: str = "dhkd", kd_temperature: float = 4.0, binary_temperature: float = 2.0,
                 ce_weight: float = 1.0, aux_weight: float = 1.0, kd_weight: float = 1.0):
        super().__init__()
        if mode not in DISTILL_MODES:
            raise VisionError(f"unknown distillation mode {mode!r}; choose one of {', '.join(DISTILL_MODES)}")
        self.mode = mode
        self.kwargs = dict(kd_temperature=kd_temperature, binary_temperature=binary_temperature,
                           ce_weight=ce_weight, aux_weight=aux_weight, kd_weight=kd_weight)

    def forward(self, outputs, labels: torch.Tensor, teacher_logits: torch.Tensor,
                labelled_mask: torch.Tensor | None = None) -> LossParts:
        """Task (CE) and distillation parts for this loss's mode."""
        return distillation_parts(outputs, labels, teacher_logits, mode=self.mode, labelled_mask=labelled_mask,
                                  **self.kwargs)


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


# -- RDD (relative difficulty distillation; per-sample port of the per-pixel method) -------------------

def teacher_disagreement_weights(teacher_main: torch.Tensor, teacher_aux: torch.Tensor) -> torch.Tensor:
    """RDD stage 1: w = exp(−KL(softmax(t_aux) ‖ softmax(t_main))) per example — examples the teacher's two
    heads agree on (easy for the teacher) count more."""
    _check_pair(teacher_aux, teacher_main)
    log_aux, log_main = F.log_softmax(teacher_aux, 1), F.log_softmax(teacher_main, 1)
    return torch.exp(-(log_aux.exp() * (log_aux - log_main)).sum(1))


def hard_example_mask(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.7, min_kept: int = 0):
    """OHEM-style: an example is hard if its true-class probability ≤ τ, where τ is raised to the
    `min_kept`-th smallest true-class probability when that is larger (so at least min_kept are hard)."""
    prob = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    if min_kept > 0:
        kth = prob.sort().values[min(min_kept, len(prob)) - 1]
        threshold = max(threshold, float(kth))
    return prob <= threshold


def rdd_loss(student: torch.Tensor, teacher_main: torch.Tensor, teacher_aux: torch.Tensor, target: torch.Tensor, *,
             stage: int, threshold: float = 0.7, min_kept: int = 0, kd_weight: float = 1.0) -> torch.Tensor:
    """RDD student loss: KD (T = 1) always, plus
    stage 1: CE weighted by `teacher_disagreement_weights` (mean over the batch);
    stage 2: CE only on examples hard for exactly one of student / teacher (XOR), averaged over those."""
    if stage not in (1, 2):
        raise VisionError(f"RDD stage must be 1 or 2, got {stage!r}")
    per_example = F.cross_entropy(student, target, reduction="none")
    if stage == 1:
        ce = (teacher_disagreement_weights(teacher_main, teacher_aux).detach() * per_example).mean()
    else:
        xor = hard_example_mask(student.detach(), target, threshold, min_kept) ^ hard_example_mask(
            teacher_main, target, threshold, min_kept)
        ce = per_example[xor].mean() if xor.any() else per_example.sum() * 0
    return ce + kd_weight * kd_loss(student, teacher_main, 1.0)
