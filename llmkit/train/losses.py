"""Pure loss functions for the trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


def _chunk_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """Σ cross-entropy of one chunk of target positions: logits = hidden · weightᵀ (+ bias), in float32."""
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="sum")


# Why our own and not a package: the maintained fused linear + cross-entropy losses (Liger-Kernel's
# FusedLinearCrossEntropy, cut-cross-entropy, TRL's fused-linear-ce hub kernel) are Triton kernels, so they need
# CUDA and a package the bare GPU box lacks, and they cannot be tested on the CPU machines CI runs on. Chunking
# with recompute in plain torch runs everywhere, and on CUDA its matmuls are cuBLAS like the plain head's.
def chunked_linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_cross_entropy_sum` of the logits `hidden · weightᵀ (+ bias)`, without the batch's logits tensor.

    `hidden` is the model's last hidden state [batch, seq, dim] (after the final norm) and `weight` the
    output head [vocab, dim]. Only target positions (labels[:, t + 1] != -100) go through the head, so
    padding and prompt tokens cost no head compute; they are taken `chunk_tokens` at a time, and each
    chunk's logits are recomputed in the backward pass (activation checkpointing) instead of kept, so at
    most one chunk's [chunk_tokens, vocab] logits exist at once, where the plain loss keeps the logits of
    every position plus their log-softmax and gradient. Same value and gradients as the plain loss up to
    float rounding. Returns (loss_sum, number of target tokens).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    shift_labels = labels[:, 1:]
    target = shift_labels != IGNORE_INDEX
    target_hidden = hidden[:, :-1, :][target]  # [n_targets, dim]
    target_labels = shift_labels[target]
    n = target_labels.numel()
    # One chunk even when n == 0, so a micro-batch without targets still returns a zero that is connected
    # to the graph (every parameter then gets a (zero) gradient, as DDP expects).
    chunks = []
    for start in range(0, max(n, 1), chunk_tokens):
        end = start + chunk_tokens
        chunks.append(
            checkpoint(
                _chunk_cross_entropy_sum,
                target_hidden[start:end],
                weight,
                bias,
                target_labels[start:end],
                use_reentrant=False,
            )
        )
    return torch.stack(chunks).sum(), target.sum()


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
