"""CEEH (Compress the Easy, Explore the Hard): per-prompt difficulty state, selective entropy, length reward.

All pure functions over arrays/tensors, as the authors' verl code runs them (docs/methods/ceeh.md):

* history: a dataset-sized accuracy record, −1 until first seen, updated by an asymmetric EMA
  (α = 0.2 when the batch accuracy is above the record, 0.05 otherwise; a record ≤ 0 is overwritten);
* hard(x) = acc(x) ≤ mean of the whole history (the *current* accuracy, the history *before* this update);
* ME mode: entropy bonus with token weights 1 (easy) / 5 (hard), coefficient c·s(t), s(t) cosine; the
  retain variant uses hard weight 1 + 4·s(t) and no global annealing;
* EA mode: Â = A + hard · min(α·sg(H), |A|/κ), α = 0.4, κ = 2;
* dynamic optimal-length reward for correct answers: r = max(−0.9, β(1 − L/L_x)), 0 when the anchor is
  unset or when acc(x) < history(x); the anchor L_x is an asymmetric EMA of the shortest correct length.
"""

from __future__ import annotations

import math

import numpy as np
import torch

UNSEEN = -1.0


def update_history(
    history: np.ndarray, indices: np.ndarray, accuracy: np.ndarray, up: float = 0.2, down: float = 0.05
) -> np.ndarray:
    """New history after a batch: for each prompt index, overwrite a record ≤ 0, else EMA with α = up/down."""
    out = np.array(history, dtype=np.float64, copy=True)
    for i, acc in zip(np.asarray(indices), np.asarray(accuracy, dtype=np.float64)):
        old = out[i]
        if old <= 0:
            out[i] = acc
        else:
            alpha = up if acc > old else down
            out[i] = alpha * acc + (1 - alpha) * old
    return out


def hard_mask(accuracy: np.ndarray, history: np.ndarray) -> np.ndarray:
    """hard(x) = acc(x) ≤ mean over the whole dataset of the history (unseen prompts count as −1)."""
    return np.asarray(accuracy, dtype=np.float64) <= float(np.mean(history))


def cosine_schedule(step: int, total_steps: int) -> float:
    """s(t) = 0.5 (1 + cos(π t / T)), from 1 at t = 0 to 0 at t = T."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def length_reward(
    lengths: np.ndarray,
    correct: np.ndarray,
    anchor: float,
    accuracy: float,
    history: float,
    beta: float = 0.1,
    floor: float = -0.9,
) -> np.ndarray:
    """Length reward of the n completions of one prompt (added to the correctness reward of 1).

    Correct completions get max(floor, β(1 − L/L_x)); everything else gets 0. The whole group gets 0
    when the anchor is unset (L_x = 0) or when this batch does worse than history (acc < history).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    out = np.zeros_like(lengths)
    if anchor <= 0 or accuracy < history:
        return out
    correct = np.asarray(correct, dtype=bool)
    out[correct] = np.maximum(floor, beta * (1.0 - lengths[correct] / anchor))
    return out


def update_anchor(
    anchor: float, lengths: np.ndarray, correct: np.ndarray, up: float = 0.2, down: float = 0.05
) -> float:
    """New anchor after scoring: the group's shortest correct length, EMA'd (α = up if shorter, else down)."""
    correct = np.asarray(correct, dtype=bool)
    if not correct.any():
        return anchor
    shortest = float(np.min(np.asarray(lengths, dtype=np.float64)[correct]))
    if anchor <= 0:
        return shortest
    alpha = up if shortest < anchor else down
    return alpha * shortest + (1 - alpha) * anchor


def me_entropy_weights(
    hard: torch.Tensor, schedule: float, factor: float = 5.0, retain: bool = False
) -> tuple[torch.Tensor, float]:
    """Per-completion entropy weights and the global scale of the ME bonus.

    Standard: weight 1 (easy) / `factor` (hard), scale s(t). Retain: weight 1 / (1 + (factor − 1)·s(t)),
    scale 1 (easy prompts keep a constant bonus).
    """
    hard = hard.to(torch.float32)
    if retain:
        return 1.0 + hard * (factor - 1.0) * schedule, 1.0
    return 1.0 + hard * (factor - 1.0), schedule


def me_entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·H·mask / Σ w·mask over the micro-batch (verl's token-mean with weights inside the mask)."""
    w = weights[:, None].expand_as(entropy) * mask
    return (entropy * w).sum() / w.sum().clamp(min=1e-8)


def ea_advantages(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    hard: torch.Tensor,
    alpha: float = 0.4,
    kappa: float = 2.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Token advantages Â = A + scale · hard · min(α·sg(H), |A|/κ); the bonus never flips A's sign."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(entropy)
    bonus = torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)
    return advantages + scale * hard.to(entropy.dtype)[:, None] * bonus


def nag(accuracy: float, length: float, base_accuracy: float, base_length: float) -> float:
    """NAG = 100 · (1 − Acc/Acc_base) · sqrt(1 − L/L_base) (lower is better; needs L ≤ L_base)."""
    if length > base_length:
        raise ValueError(f"NAG needs a length no longer than the base's ({length} > {base_length})")
    return 100.0 * (1.0 - accuracy / base_accuracy) * math.sqrt(1.0 - length / base_length)
