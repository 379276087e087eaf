"""EFUF-style unlearning losses (pure functions over per-example cross-entropies).

EFUF (Xing et al., EMNLP'24; `starreeze/efuf`) scores every span with CLIP and trains on

    L = w_pos·mean(CE_pos·s_pos) + w_gold·G·mean(CE_gold) + w_sent·mean(CE_sent·s_sent)
        − w_neg·mean(CE_neg·(T − s_neg))

with T = 55 (the sum of the two CLIP thresholds 23 and 32) and G = 40 (the fixed score of gold
captions). The minus sign on the hallucinated (neg) term is the gradient ascent. SARE keeps these terms
and applies its sharpness-aware inner maximisation to the neg term only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmkit.data.sft import IGNORE_INDEX

# Example kinds (an int per example so a whole micro-batch is one tensor).
KIND_NEG, KIND_POS, KIND_GOLD, KIND_SENT = 0, 1, 2, 3
KIND_NAMES = {"neg": KIND_NEG, "pos": KIND_POS, "gold": KIND_GOLD, "sent": KIND_SENT}


def per_example_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy of each row over its target tokens, and each row's target count.

    `logits[:, t]` predicts `labels[:, t + 1]`; -100 labels are ignored. A row without targets gets CE 0
    (it then contributes nothing, rather than NaN). Returns (ce [B], n_tokens [B]).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, T, V] and labels [B, T]; got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_ce = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels.clamp_min(0), reduction="none")  # [B, T-1]
    mask = (shift_labels != IGNORE_INDEX).to(token_ce.dtype)
    n = mask.sum(dim=1)
    return (token_ce * mask).sum(dim=1) / n.clamp_min(1.0), n


def gradient_ascent_loss(ce: torch.Tensor, count: float | None = None) -> torch.Tensor:
    """Plain gradient-ascent unlearning: −Σ CE / count (count defaults to the number of rows).

    `count` is the number of forget examples in the whole optimizer step (all micro-batches and
    processes), so a micro-batch's share sums to the step mean.
    """
    count = float(ce.numel()) if count is None else float(count)
    if count <= 0:
        raise ValueError("gradient_ascent_loss needs at least one forget example")
    return -ce.sum() / count


@dataclass(frozen=True)
class EfufWeights:
    """The four term weights of the EFUF loss at one point of training (see `schedules.efuf_weights`)."""

    neg: float
    pos: float
    gold: float
    sent: float


def efuf_loss(
    ce: torch.Tensor,
    kinds: torch.Tensor,
    scores: torch.Tensor,
    weights: EfufWeights,
    counts: dict[int, float] | None = None,
    neg_threshold_sum: float = 55.0,
    gold_score: float = 40.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The EFUF loss split into (forget part, retain part), each a scalar tensor.

    forget = −w_neg · Σ_neg CE·(T − s) / N_neg
    retain = w_pos · Σ_pos CE·s / N_pos + w_gold · G · Σ_gold CE / N_gold + w_sent · Σ_sent CE·s / N_sent

    `kinds` holds KIND_* per row, `scores` the span score per row (ignored for gold). `counts[kind]` is
    the number of rows of that kind in the whole optimizer step (default: the rows here), so the mean is
    over the step, not the micro-batch. A kind with no rows contributes 0.
    """
    if not (ce.shape == kinds.shape == scores.shape) or ce.dim() != 1:
        raise ValueError(
            f"ce, kinds and scores must be 1-D of the same length; got {ce.shape}, {kinds.shape}, {scores.shape}"
        )
    scores = scores.to(ce.dtype)

    def mean_of(kind: int, values: torch.Tensor) -> torch.Tensor:
        mask = kinds == kind
        n = float(mask.sum()) if counts is None else float(counts.get(kind, 0))
        if n <= 0:
            return ce.sum() * 0.0  # keeps the graph (and the device/dtype) without contributing
        return (values * mask.to(ce.dtype)).sum() / n

    forget = -weights.neg * mean_of(KIND_NEG, ce * (neg_threshold_sum - scores))
    retain = (
        weights.pos * mean_of(KIND_POS, ce * scores)
        + weights.gold * gold_score * mean_of(KIND_GOLD, ce)
        + weights.sent * mean_of(KIND_SENT, ce * scores)
    )
    return forget, retain
