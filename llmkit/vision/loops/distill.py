"""Teacher → student distillation with optional DHKD gradient alignment, and RDD students (per sample or pixel).

The student sees labels only where `labelled_mask` is True (CE) but the teacher's logits on every
input (distillation), the semi-supervised setting of the §5 CPU check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.vision import VisionError
from llmkit.vision.loops.common import accuracy, fit
from llmkit.vision.losses.distill import IGNORE_INDEX, DualHeadDistillLoss, masked_kd, project_conflicting, rdd_loss
from llmkit.vision.losses.evidential import CrossEntropy
from llmkit.vision.models import MLP


@dataclass
class DistillConfig:
    """Settings of the §5 CPU check: teacher MLP-512, student MLP-32, full-batch Adam."""

    teacher_hidden: tuple = (512,)
    student_hidden: tuple = (32,)
    teacher_steps: int = 400
    student_steps: int = 400
    lr: float = 1e-2
    kd_temperature: float = 4.0
    binary_temperature: float = 2.0
    aux_weight: float = 1.0


def train_teacher(x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, config: DistillConfig | None = None):
    """A wider MLP trained with CE on all labels."""
    config = config or DistillConfig()
    torch.manual_seed(seed)
    teacher = MLP(x.shape[1], int(y.max()) + 1, config.teacher_hidden)
    return fit(teacher, x, y, CrossEntropy(), steps=config.teacher_steps, lr=config.lr, seed=seed)


def aligned_step_gradients(parameters, task: torch.Tensor, aux: torch.Tensor) -> None:
    """Set each parameter's .grad to g_task + project_conflicting(g_task, g_aux), over all parameters jointly."""
    parameters = [p for p in parameters if p.requires_grad]
    g_task = torch.autograd.grad(task, parameters, retain_graph=True, allow_unused=True)
    g_aux = torch.autograd.grad(aux, parameters, allow_unused=True)
    flat = lambda grads: torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(parameters, grads)]
    )
    task_vec, aux_vec = flat(g_task), flat(g_aux)
    combined = task_vec + project_conflicting(task_vec, aux_vec)
    offset = 0
    for p in parameters:
        p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def train_student(
    mode: str,
    x: torch.Tensor,
    y: torch.Tensor,
    labelled_mask: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    gradient_alignment: bool = False,
    seed: int = 0,
    config: DistillConfig | None = None,
):
    """Train a student in one of `DISTILL_MODES` (two heads for the DHKD modes); returns the student."""
    config = config or DistillConfig()
    loss_fn = DualHeadDistillLoss(
        mode,
        kd_temperature=config.kd_temperature,
        binary_temperature=config.binary_temperature,
        aux_weight=config.aux_weight,
    )
    torch.manual_seed(seed)
    student = MLP(
        x.shape[1], teacher_logits.shape[1], config.student_hidden, num_heads=2 if mode.startswith("dhkd") else 1
    )
    optimiser = torch.optim.Adam(student.parameters(), lr=config.lr)
    student.train()
    for _ in range(config.student_steps):
        optimiser.zero_grad()
        parts = loss_fn(student(x), y, teacher_logits, labelled_mask)
        if gradient_alignment and mode != "ce":
            aligned_step_gradients(student.parameters(), parts.task, parts.aux)
        else:
            parts.total.backward()
        optimiser.step()
    return student


def student_accuracy(student, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """Test accuracy (%) of head 0 (DHKD's inference head)."""
    return accuracy(student, x_test, y_test, head=0)


RDD_ARMS = ("ce", "kd", "rdd")


def train_rdd_student(
    x: torch.Tensor,
    y: torch.Tensor,
    teacher,
    *,
    arm: str = "rdd",
    seed: int = 0,
    steps: int = 400,
    stage_one_fraction: float = 0.1,
    lr: float = 1e-2,
    hidden=(16,),
    min_kept: int = 0,
    student: nn.Module | None = None,
    batch_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    poly_power: float | None = None,
):
    """Fully supervised student for the RDD checks: arm 'ce', 'kd' (CE + KD T=1) or 'rdd' (stage 1 for the first
    `stage_one_fraction` of steps — the reference's 4k of 40k iterations — then stage 2). The teacher needs two
    heads (main = head 0, auxiliary = head 1).

    Per sample (x [N, D], y [N]) the student is an MLP(`hidden`); per pixel (images x [B, C, H, W], label maps
    y [B, H, W]) pass `student` (e.g. a `SegNet`). Labels equal to `ignore_index` are left out of every term.
    Full batch by default; with `batch_size`, each step draws that many examples without replacement (seeded).
    Adam at a constant `lr`, or with `poly_power` the reference's poly decay lr·(1 − step/steps)^power.
    """
    if arm not in RDD_ARMS:
        raise VisionError(f"unknown RDD arm {arm!r}; choose {', '.join(RDD_ARMS)}")
    if not 0.0 <= stage_one_fraction <= 1.0:
        raise VisionError(f"stage_one_fraction must be in [0, 1], got {stage_one_fraction}")
    teacher.eval()
    with torch.no_grad():
        t_out = teacher(x)
    if len(t_out.heads) < 2:
        raise VisionError("RDD needs a teacher with a main and an auxiliary head (num_heads=2)")
    t_main, t_aux = t_out.heads[0], t_out.heads[1]
    torch.manual_seed(seed)
    student = MLP(x.shape[1], t_main.shape[1], hidden) if student is None else student
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    for step in range(steps):
        batch = slice(None) if batch_size is None else torch.randperm(len(x), generator=generator)[:batch_size]
        if poly_power is not None:
            for group in optimiser.param_groups:
                group["lr"] = lr * (1 - step / steps) ** poly_power
        optimiser.zero_grad()
        logits = student(x[batch]).logits
        if arm == "rdd":
            stage = 1 if step < stage_one_fraction * steps else 2
            loss = rdd_loss(
                logits, t_main[batch], t_aux[batch], y[batch], stage=stage, min_kept=min_kept, ignore_index=ignore_index
            )
        elif (y[batch] != ignore_index).any():
            loss = F.cross_entropy(logits, y[batch], ignore_index=ignore_index)
            if arm == "kd":
                loss = loss + masked_kd(logits, t_main[batch], y[batch], ignore_index=ignore_index)
        else:  # nothing labelled in this batch
            loss = logits.sum() * 0
        loss.backward()
        optimiser.step()
    return student
