"""Multi-label loops: L2D teacher → student distillation, and CAP semi-supervised pseudo-labelling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.losses.multilabel import (
    L2DLoss,
    asymmetric_loss,
    cap_pseudo_labels,
    cdcr_weights,
    fixed_threshold_pseudo_labels,
    mean_average_precision,
)
from llmkit.vision.models import MLP, LabelWiseMLP


def _adam_steps(model, loss_of_batch, steps: int, lr: float, batches=None, seed: int = 0):
    """Adam for `steps` passes; each pass sums `loss_of_batch(idx)` over mini-batches of `batches` (or full batch)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        if batches is None:
            optimiser.zero_grad()
            loss_of_batch(None).backward()
            optimiser.step()
            continue
        n, size = batches
        for chunk in torch.randperm(n, generator=generator).split(size):
            optimiser.zero_grad()
            loss_of_batch(chunk).backward()
            optimiser.step()
    return model


def predict_scores(model, x: torch.Tensor) -> np.ndarray:
    """Sigmoid scores [N, K] of head 0."""
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(x).logits).numpy()


# -- L2D ------------------------------------------------------------------------------------------

#: Student objectives: BCE only, BCE + MLD, full L2D with the reference COCO weights (λ_cd 100, λ_id 1000),
#: and L2D with the embedding weights scaled down 100× (this toy's BCE sums are far smaller than COCO's).
L2D_ARMS = {
    "bce": dict(logits_weight=0.0, embedding_weight=0.0),
    "bce+mld": dict(embedding_weight=0.0),
    "l2d": {},
    "l2d-scaled": dict(cd_weight=1.0, id_weight=10.0),
}


@dataclass
class L2DConfig:
    """Teacher LabelWiseMLP-256 (5 epochs: longer overfits this toy), student LabelWiseMLP-16 (20 epochs), d = 16."""

    teacher_hidden: tuple = (256,)
    student_hidden: tuple = (16,)
    embed_dim: int = 16
    teacher_epochs: int = 5
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3


def train_l2d(arm: str, x, y, x_test, y_test, *, seed: int = 0, config: L2DConfig | None = None, teacher=None):
    """Train a student with one of `L2D_ARMS` against a teacher (trained here if not given); returns (mAP, teacher)."""
    if arm not in L2D_ARMS:
        raise VisionError(f"unknown L2D arm {arm!r}; choose one of {', '.join(L2D_ARMS)}")
    config = config or L2DConfig()
    bce = L2DLoss(logits_weight=0.0, embedding_weight=0.0)
    if teacher is None:
        torch.manual_seed(seed)
        teacher = LabelWiseMLP(x.shape[1], y.shape[1], config.teacher_hidden, config.embed_dim)
        _adam_steps(
            teacher,
            lambda b: bce(teacher(x[b]), y[b], None) / len(b),
            config.teacher_epochs,
            config.lr,
            (len(x), config.batch_size),
            seed,
        )
        teacher.eval()
    with torch.no_grad():
        teacher_out = teacher(x)
    loss = L2DLoss(**L2D_ARMS[arm])
    torch.manual_seed(seed + 1)
    student = LabelWiseMLP(x.shape[1], y.shape[1], config.student_hidden, config.embed_dim)
    with_teacher = lambda b: type(teacher_out)(teacher_out.logits[b], (teacher_out.logits[b],), teacher_out.features[b])
    _adam_steps(
        student,
        lambda b: loss(student(x[b]), y[b], with_teacher(b)) / len(b),
        config.epochs,
        config.lr,
        (len(x), config.batch_size),
        seed + 1,
    )
    return mean_average_precision(predict_scores(student, x_test), y_test.numpy()), teacher


# -- CAP ------------------------------------------------------------------------------------------

PSEUDO_LABEL_RULES = ("supervised", "fixed", "cap")


@dataclass
class CAPConfig:
    """Warm-up on labelled data, then pseudo-label rounds (labels re-estimated every round)."""

    hidden: tuple = (128,)
    warmup_steps: int = 200
    rounds: int = 10
    steps_per_round: int = 30
    lr: float = 1e-3


@dataclass
class CAPResult:
    """Test mAP (%) and the final round's pseudo-label precision / recall (%) on the unlabelled set."""

    map: float
    precision: float | None = None
    recall: float | None = None


def train_cap(
    rule: str, x_lab, y_lab, x_unl, y_unl_true, x_test, y_test, *, seed: int = 0, config: CAPConfig | None = None
) -> CAPResult:
    """Semi-supervised multi-label training with `rule` in PSEUDO_LABEL_RULES ('supervised' = labelled data only).

    `y_unl_true` is used only to report pseudo-label precision/recall, never to train. No EMA teacher
    (the reference's EMA 0.9997 is for long GPU runs); pseudo-labels come from the current model.
    """
    if rule not in PSEUDO_LABEL_RULES:
        raise VisionError(f"unknown pseudo-label rule {rule!r}; choose one of {', '.join(PSEUDO_LABEL_RULES)}")
    config = config or CAPConfig()
    torch.manual_seed(seed)
    model = MLP(x_lab.shape[1], y_lab.shape[1], config.hidden)
    labelled_loss = lambda _: asymmetric_loss(model(x_lab).logits, y_lab) / len(x_lab)
    _adam_steps(model, labelled_loss, config.warmup_steps, config.lr)
    if rule == "supervised":
        _adam_steps(model, labelled_loss, config.rounds * config.steps_per_round, config.lr)
        return CAPResult(mean_average_precision(predict_scores(model, x_test), y_test.numpy()))
    prior = y_lab.mean(0)
    for _ in range(config.rounds):
        probs = torch.as_tensor(predict_scores(model, x_unl))
        pseudo, mask = cap_pseudo_labels(probs, prior) if rule == "cap" else fixed_threshold_pseudo_labels(probs)
        step_loss = lambda _: (
            (asymmetric_loss(model(x_lab).logits, y_lab) + asymmetric_loss(model(x_unl).logits, pseudo, weight=mask))
            / (len(x_lab) + len(x_unl))
        )
        _adam_steps(model, step_loss, config.steps_per_round, config.lr)
    true = y_unl_true.numpy() > 0
    hit = (pseudo.numpy() > 0) & true
    precision = 100 * hit.sum() / max(pseudo.numpy().sum(), 1)
    recall = 100 * hit.sum() / max(true.sum(), 1)
    return CAPResult(
        mean_average_precision(predict_scores(model, x_test), y_test.numpy()), float(precision), float(recall)
    )


# -- CDCR -----------------------------------------------------------------------------------------


def train_cdcr(
    arm: str,
    x,
    candidates,
    x_test,
    y_test,
    *,
    seed: int = 0,
    hidden=(128,),
    warmup_epochs: int = 5,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    threshold: float = 0.6,
    true_labels=None,
) -> dict:
    """Partial multi-label training: 'naive' = BCE with every candidate as a positive; 'cdcr' = the same
    warm-up, then BCE weighted by `cdcr_weights` recomputed every epoch. Returns test mAP and, if
    `true_labels` is given (reporting only), the precision of the candidates the weights trust at the end."""
    if arm not in ("naive", "cdcr"):
        raise VisionError(f"unknown CDCR arm {arm!r}; choose naive or cdcr")
    torch.manual_seed(seed)
    model = MLP(x.shape[1], candidates.shape[1], hidden)
    weights = torch.ones_like(candidates)
    bce = lambda b: (
        torch.nn.functional.binary_cross_entropy_with_logits(
            model(x[b]).logits, candidates[b], weight=weights[b], reduction="sum"
        )
        / len(b)
    )
    _adam_steps(model, bce, warmup_epochs, lr, (len(x), batch_size), seed)
    for epoch in range(epochs - warmup_epochs):
        if arm == "cdcr":
            weights = cdcr_weights(torch.as_tensor(predict_scores(model, x)), candidates, threshold)
        _adam_steps(model, bce, 1, lr, (len(x), batch_size), seed + 1 + epoch)
    result = {"map": mean_average_precision(predict_scores(model, x_test), y_test.numpy())}
    if true_labels is not None and arm == "cdcr":
        trusted = (candidates > 0) & (weights > 0)
        result["trusted_precision"] = float(100 * (true_labels[trusted] > 0).float().mean())
        result["trusted_recall"] = float(100 * trusted[true_labels > 0].float().mean())
    return result


# -- CCMN -----------------------------------------------------------------------------------------


def train_ccmn(
    arm: str,
    x,
    observed,
    x_test,
    y_test,
    *,
    rho_pos: float,
    rho_neg: float,
    seed: int = 0,
    hidden=(128,),
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> float:
    """Multi-label training on noisy labels: 'bce' (ignores the noise) or 'ccmn' (unbiased corrected BCE with the
    known flip rates). Returns the clean-test mAP."""
    from llmkit.vision.losses.multilabel import ccmn_unbiased_bce

    if arm not in ("bce", "ccmn"):
        raise VisionError(f"unknown CCMN arm {arm!r}; choose bce or ccmn")
    torch.manual_seed(seed)
    model = MLP(x.shape[1], observed.shape[1], hidden)
    if arm == "bce":
        loss = lambda b: (
            torch.nn.functional.binary_cross_entropy_with_logits(model(x[b]).logits, observed[b], reduction="sum")
            / len(b)
        )
    else:
        loss = lambda b: ccmn_unbiased_bce(model(x[b]).logits, observed[b], rho_pos, rho_neg) / len(b)
    _adam_steps(model, loss, epochs, lr, (len(x), batch_size), seed)
    return mean_average_precision(predict_scores(model, x_test), y_test.numpy())
