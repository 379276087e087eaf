"""GRPO building blocks as small registered pure functions over tensors and masks (verl's core_algos shape).

Shapes: a batch holds B = P·n completions (P prompts, n samples each, grouped contiguously); token
tensors are (B, T) with a response mask (1 on completion tokens that count). Registries:

* `ADVANTAGE_ESTIMATORS`: ``grpo`` (group-normalised: (r − mean) / (std + eps)) and ``drgrpo`` (r − mean).
* `POLICY_LOSSES`: ``clipped``: PPO's clipped surrogate with separate low/high clip (DAPO clip-higher) and
  verl's dual clip for negative advantages.
* `KL_PENALTIES`: ``k1`` (log-ratio), ``low_var_kl`` (Schulman's k3, clamped to [−10, 10] as in verl).
* `LOSS_AGGREGATIONS`: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``.

Every function is documented with its formula and unit-tested against hand-computed numbers.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
KL_PENALTIES: dict[str, Callable] = {}
LOSS_AGGREGATIONS: dict[str, Callable] = {}


def _register(table: dict[str, Callable], name: str):
    def wrap(fn):
        table[name] = fn
        return fn

    return wrap


def get(table: dict[str, Callable], name: str) -> Callable:
    """Look a name up in a registry; unknown names fail listing the choices."""
    if name not in table:
        raise KeyError(f"unknown '{name}'; choose one of {sorted(table)}")
    return table[name]


# ----- advantages --------------------------------------------------------------------------------


@_register(ADVANTAGE_ESTIMATORS, "grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_group r) / (std_group r + eps), std unbiased (as verl and TRL); one value per completion."""
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((groups - mean) / (std + eps)).view(-1)


@_register(ADVANTAGE_ESTIMATORS, "drgrpo")
def drgrpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i − mean_group r (Dr.GRPO; CEEH's `norm_adv_by_std_in_grpo=False`)."""
    groups = rewards.view(-1, group_size)
    return (groups - groups.mean(dim=1, keepdim=True)).view(-1)


# ----- policy loss -------------------------------------------------------------------------------


@_register(POLICY_LOSSES, "clipped")
def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A), ρ = exp(logπ − logπ_old); and the clipped mask.

    log ρ is clamped to [−20, 20] (verl) so a far-off token gives a large, finite ratio. With `dual_clip` c > 1
    (verl's clip_ratio_c), tokens with A < 0 have their loss capped at −c·A. `advantages` is (B, T)
    (token-level) or (B,) (broadcast over the tokens of each completion).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(log_probs)
    ratio = torch.exp(torch.clamp(log_probs - old_log_probs, -20.0, 20.0))
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    if dual_clip > 1.0:
        capped = torch.minimum(loss, -dual_clip * advantages)
        negative = advantages < 0
        was_clipped = was_clipped | (negative & (capped < loss))
        loss = torch.where(negative, capped, loss)
    return loss, was_clipped.float()


# ----- KL to the reference -----------------------------------------------------------------------


@_register(KL_PENALTIES, "k1")
def kl_k1(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k1 = logπ − logπ_ref per token."""
    return log_probs - ref_log_probs


@_register(KL_PENALTIES, "low_var_kl")
def kl_low_var(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1 per token, clamped to [−10, 10] (verl's low_var_kl)."""
    diff = ref_log_probs - log_probs
    return torch.clamp(torch.exp(diff) - diff - 1.0, min=-10.0, max=10.0)


# ----- aggregation -------------------------------------------------------------------------------


@_register(LOSS_AGGREGATIONS, "token-mean")
def agg_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm_length: int | None = None) -> torch.Tensor:
    """Σ loss·mask / Σ mask over the whole batch (every token weighs the same; DAPO)."""
    return (loss * mask).sum() / mask.sum().clamp(min=1)


@_register(LOSS_AGGREGATIONS, "seq-mean-token-mean")
def agg_seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm_length: int | None = None) -> torch.Tensor:
    """Mean over completions of each completion's token mean (original GRPO); empty completions count 0."""
    per_seq = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_seq.mean()


@_register(LOSS_AGGREGATIONS, "seq-mean-token-sum-norm")
def agg_seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, norm_length: int | None = None) -> torch.Tensor:
    """Mean over completions of Σ_t loss / L, with a constant L (Dr.GRPO; default L = T, the padded length)."""
    length = norm_length if norm_length is not None else loss.shape[1]
    return ((loss * mask).sum(dim=1) / length).mean()


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss with the named aggregation."""
    return get(LOSS_AGGREGATIONS, mode)(loss, mask.to(loss.dtype), norm_length)


# ----- token statistics --------------------------------------------------------------------------


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = logsumexp(z) − Σ softmax(z)·z of the next-token distribution, in nats."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    return log_z - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) under `logits` at the same positions (callers shift: logits[:, t] scores tokens[:, t])."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sampling_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z / T: the distribution the completions were sampled from (TRL and verl score log-probs and entropy on it)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score sampled tokens, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def token_log_probs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, entropy_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(tokens), H) from one log-softmax; H = −Σ p·log p, detached unless `entropy_grad` (a loss term uses it)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    chosen = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    with contextlib.nullcontext() if entropy_grad else torch.no_grad():
        entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return chosen, entropy
