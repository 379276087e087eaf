"""Partial-label learning (each example has a *set* of candidate labels, one of them true).

MoGD (Zou, Xie, Huang, arXiv 2208.12459): keep a weight per (example, candidate) and move it by the
gradient of a small clean validation set's loss after a virtual SGD step on the weighted training
loss (learning-to-reweight). Our version of the update is an exponentiated-gradient step on each example's
candidate weights (the paper's exact normalisation was not retrievable): w ← normalise(w·exp(−γ·g)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.vision import VisionError


def candidate_sets(labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Binary candidate matrix [N, K]: the true label plus each other class independently with probability `rate`."""
    if not 0 <= rate <= 1:
        raise VisionError(f"candidate rate must be in [0, 1], got {rate}")
    candidates = (rng.random((len(labels), num_classes)) < rate).astype(np.float32)
    candidates[np.arange(len(labels)), labels] = 1
    return candidates


def normalise_over_candidates(weights: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Zero the non-candidates, clip at 0 and rescale each row to sum 1 (uniform over candidates if all zero)."""
    w = weights.clamp(min=0) * candidates
    total = w.sum(1, keepdim=True)
    uniform = candidates / candidates.sum(1, keepdim=True)
    return torch.where(total > 0, w / total.clamp(min=1e-12), uniform)


def weighted_candidate_loss(logits: torch.Tensor, weights: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Σ_j w_ij·(−log p_ij) per example (weights already zero outside the candidate set)."""
    if logits.shape != weights.shape:
        raise VisionError(f"logits {tuple(logits.shape)} and weights {tuple(weights.shape)} differ in shape")
    per_example = -(weights * F.log_softmax(logits, 1)).sum(1)
    return per_example.mean() if reduction == "mean" else per_example.sum() if reduction == "sum" else per_example


def self_training_weights(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """PRODEN-style baseline: candidate weights ∝ the model's current probabilities, renormalised over candidates."""
    return normalise_over_candidates(torch.softmax(logits.detach(), 1), candidates)


def meta_weight_gradient(
    model: torch.nn.Module,
    x: torch.Tensor,
    weights: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    virtual_lr: float,
) -> torch.Tensor:
    """∂ L_val(θ − η∇θ Σ_ij w_ij ℓ_ij) / ∂w at the current weights: how each candidate weight would change the
    clean validation loss after one virtual SGD step (uses torch.func.functional_call)."""
    from torch.func import functional_call

    params = dict(model.named_parameters())
    w = weights.clone().requires_grad_(True)
    train_loss = weighted_candidate_loss(functional_call(model, params, (x,)).logits, w, reduction="sum")
    grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True)
    stepped = {name: p - virtual_lr * g for (name, p), g in zip(params.items(), grads)}
    val_loss = F.cross_entropy(functional_call(model, stepped, (x_val,)).logits, y_val)
    return torch.autograd.grad(val_loss, w)[0]
