"""Pure loss functions for the trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.data.sft import IGNORE_INDEX


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over target positions, and the number of target tokens.

    `logits[:, t]` predicts `labels[:, t + 1]`; labels equal to -100 are ignored. The sum (not the mean)
    is returned so the caller can normalise by the target-token count of a whole optimizer step.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()


def count_target_tokens(labels: torch.Tensor) -> int:
    """Number of positions that contribute to the shifted next-token loss."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def step_normalised_loss(
    loss_sum: torch.Tensor, num_step_tokens: int, world_size: int, backward_divisor: int
) -> torch.Tensor:
    """Scale a micro-batch's summed loss so that the gradients of one optimizer step equal

        d/dθ [ Σ over every micro-batch of every process of loss_sum ] / num_step_tokens,

    whatever the split into micro-batches and processes. Gradient averaging across `world_size`
    processes (DDP / DeepSpeed) divides by world_size, and accelerate/DeepSpeed divide each backward by
    the accumulation steps (`backward_divisor`); both are undone here.
    """
    if num_step_tokens <= 0:
        raise ValueError("an optimizer step has no target tokens")
    return loss_sum * (world_size * backward_divisor / num_step_tokens)
