"""EFUF's loss-weight schedules as pure functions of training progress (0 at the first step, 1 at the end)."""

from __future__ import annotations

from llmkit.unlearning.losses import EfufWeights


def linear_after(progress: float, start_value: float, end_value: float, start_fraction: float) -> float:
    """`start_value` until `start_fraction` of training, then linear to `end_value` at progress 1."""
    if not 0.0 <= start_fraction < 1.0:
        raise ValueError(f"start_fraction must be in [0, 1), got {start_fraction}")
    p = min(max(progress, 0.0), 1.0)
    if p <= start_fraction:
        return start_value
    t = (p - start_fraction) / (1.0 - start_fraction)
    return start_value + t * (end_value - start_value)


def efuf_weights(
    progress: float,
    neg_start: float = 0.3,
    neg_end: float = 0.0,
    pos_start: float = 1.0,
    pos_end: float = 0.5,
    decay_start: float = 0.4,
    gold: float = 0.3,
    sent: float = 0.0,
) -> EfufWeights:
    """EFUF defaults: w_neg 0.3 → 0 and w_pos 1 → 0.5, both linear from 40% of training; w_gold 0.3, w_sent 0.

    Spec (docs/methods/sare.md §2): "w_neg goes linearly 0.3 → 0 starting at 40% of training; w_pos goes 1 → 0.5";
    we read the w_pos decay as sharing the same window (an interpretation; `decay_start` sets both).
    """
    return EfufWeights(
        neg=linear_after(progress, neg_start, neg_end, decay_start),
        pos=linear_after(progress, pos_start, pos_end, decay_start),
        gold=gold,
        sent=sent,
    )
