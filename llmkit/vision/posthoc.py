"""Post-hoc operations on trained networks.

Optimum shifting (Zhou, Li, Feng, Huang, AAAI 2025): for a linear layer whose inputs on a batch are
A (n × d, n < d), many weight matrices give the same outputs Z = A·V. Replacing V by the
minimum-norm one, V* = A⁺Z = A⁺A·V (the projection of V's columns onto A's row space), leaves the
training loss on that batch unchanged while shrinking ‖V‖, which the paper ties to a smaller
Hessian trace (a flatter optimum). The stochastic version repeats this on mini-batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmkit.vision import VisionError


def min_norm_weights(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, rcond: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Minimum-norm (weight, bias) giving the same outputs as `inputs @ weight.T + bias` on these inputs.

    inputs [n, d]; weight [k, d] (nn.Linear layout); the bias is treated as the weight of a constant-1
    input column, so it is shifted jointly. Returns new tensors; the inputs are not changed.
    """
    if inputs.dim() != 2 or weight.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise VisionError(f"inputs [n, d] and weight [k, d] expected, got {tuple(inputs.shape)}, {tuple(weight.shape)}")
    a = inputs.double()
    v = weight.T.double()
    if bias is not None:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        v = torch.cat([v, bias.double()[None, :]], 0)
    v_star = torch.linalg.pinv(a, rtol=rcond) @ (a @ v)
    if bias is None:
        return v_star.T.to(weight.dtype), None
    return v_star[:-1].T.to(weight.dtype), v_star[-1].to(bias.dtype)


@torch.no_grad()
def optimum_shift_(layer: nn.Linear, inputs: torch.Tensor, rcond: float = 1e-6) -> nn.Linear:
    """Replace `layer`'s weight (and bias) in place by the minimum-norm ones for these layer inputs."""
    weight, bias = min_norm_weights(inputs, layer.weight, layer.bias, rcond)
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


def input_hessian_trace(weight: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean over examples of tr(∂²CE/∂a²) for a linear layer z = W a + b followed by softmax-CE.

    ∂²CE/∂z² = diag(p) − p pᵀ, so the Hessian w.r.t. the layer input a is Wᵀ(diag(p) − p pᵀ)W with trace
    Σ_k p_k ‖w_k‖² − ‖Wᵀp‖². With the outputs (hence p) fixed, it shrinks with W — optimum shifting's
    flatness argument, measured.
    """
    row_norms = weight.pow(2).sum(1)  # ‖w_k‖²
    return (probs @ row_norms - (probs @ weight).pow(2).sum(1)).mean()


def add_trigger(x: torch.Tensor, side: int = 8, size: int = 2, value: float = 1.0) -> torch.Tensor:
    """Backdoor trigger for flat 8×8 images: a `size`×`size` patch of `value` in the bottom-right corner."""
    images = x.clone().view(-1, side, side)
    images[:, side - size :, side - size :] = value
    return images.view(x.shape)


def flain_flip(initial_weight: torch.Tensor, final_weight: torch.Tensor, dormant: torch.Tensor) -> torch.Tensor:
    """W = W_init + ΔW with ΔW's columns for dormant input neurons negated, rescaled to ‖W_final‖_F."""
    update = final_weight - initial_weight
    sign = torch.where(dormant, -1.0, 1.0).to(update.dtype)
    flipped = initial_weight + update * sign[None, :]
    return flipped * (final_weight.norm() / flipped.norm().clamp(min=1e-12))


@torch.no_grad()
def flain_defence(
    initial_weight: torch.Tensor,
    final_weight: torch.Tensor,
    input_activation: torch.Tensor,
    evaluate,
    *,
    step: float = 0.001,
    tolerance: float = 0.05,
):
    """FLAIN (Ding, Yang, Huang, ICMR 2025): flip the accumulated FL update of low-activation input neurons.

    input_activation: mean activation of each input neuron of the chosen FC layer on a small clean
    auxiliary set. The threshold k rises from `step` in steps of `step`; neurons with activation in [0, k]
    get their update flipped (`flain_flip`); stop before auxiliary accuracy (`evaluate(W)`, a fraction)
    drops by ≥ `tolerance` from the undefended one. Only thresholds where the flipped set changes are
    evaluated — identical result to stepping every 0.001, far fewer evaluations.
    Returns (defended weight, final threshold, number of flipped neurons).
    """
    base = evaluate(final_weight)
    best, best_k, best_count = final_weight, 0.0, 0
    nonneg = input_activation[input_activation >= 0]
    thresholds = sorted({max(step, float(np.ceil(float(a) / step - 1e-9) * step)) for a in nonneg.tolist()})
    for k in thresholds:
        dormant = (input_activation >= 0) & (input_activation <= k + 1e-12)
        candidate = flain_flip(initial_weight, final_weight, dormant)
        if base - evaluate(candidate) >= tolerance:
            break
        best, best_k, best_count = candidate, k, int(dormant.sum())
    return best, best_k, best_count
