"""Shared training helpers for the loops: derived seeds, a full-/mini-batch fit, accuracy, segmentation scores."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmkit.vision import VisionError


def derived_seed(*keys: int) -> int:
    """A 32-bit seed determined by a tuple of integers (e.g. (run seed, round, role)).

    Seeding every training call from its own key — rather than from one running RNG — is what lets a
    resumed run reproduce the uninterrupted one: round r's models never depend on earlier RNG draws.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    on_epoch_end=None,
) -> nn.Module:
    """Train `model` with Adam on (x, y) using `loss_fn(outputs, y)`.

    Full batch for `steps` steps (default), or mini-batches of `batch_size` for `epochs` epochs.
    The shuffling order comes from `seed`, so the result depends only on the arguments.
    `on_epoch_end(epoch, model)` (mini-batch mode) is called after each epoch, e.g. to record a
    learning curve; it must leave the model in train mode.
    """
    if x.shape[0] != y.shape[0]:
        raise VisionError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise VisionError("cannot train on an empty set")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    if batch_size is None:
        for _ in range(steps if steps is not None else 100):
            optimiser.zero_grad()
            loss_fn(model(x), y).backward()
            optimiser.step()
        return model
    for epoch in range(epochs if epochs is not None else 1):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start : start + batch_size]
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
            model.train()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: int = 0) -> float:
    """Top-1 accuracy (%) of `model`'s head `head` on (x, y)."""
    model.eval()
    with torch.no_grad():
        predicted = model(x).heads[head].argmax(1)
    return float((predicted == y).float().mean() * 100)


def confusion_matrix(
    predicted: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted class, over entries whose target != ignore_index.

    Works for any matching shapes (labels [N] or label maps [B, H, W])."""
    if predicted.shape != target.shape:
        raise VisionError(f"predicted and target shapes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    valid = target != ignore_index
    t, p = target[valid].long(), predicted[valid].long()
    if len(t) and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise VisionError(f"labels must lie in [0, {num_classes - 1}] (or equal ignore_index {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes).numpy()


def miou_and_pixel_accuracy(confusion: np.ndarray) -> tuple[float, float]:
    """(mean IoU %, pixel accuracy %) from a confusion matrix; IoU_k = TP/(TP+FP+FN), averaged over the classes
    that occur in the target or the prediction (union > 0)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    miou = float((tp[present] / union[present]).mean() * 100) if present.any() else 0.0
    total = confusion.sum()
    return miou, float(tp.sum() / total * 100) if total else 0.0


def segmentation_scores(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    ignore_index: int = 255,
    batch_size: int = 256,
) -> tuple[float, float]:
    """(mIoU %, pixel accuracy %) of head 0's per-pixel argmax over images x [B, C, H, W], label maps y [B, H, W]."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            predicted = model(x[start : start + batch_size]).logits.argmax(1)
            confusion += confusion_matrix(predicted, y[start : start + batch_size], num_classes, ignore_index)
    return miou_and_pixel_accuracy(confusion)
