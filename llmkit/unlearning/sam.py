"""Targeted-SAM (SARE) and the sharpness probe: pure functions over parameter and gradient lists.

One SARE step (docs/methods/sare.md §3):
  1. g = ∇L_neg(θ)                         (L_neg: the unlearning loss, i.e. the negated forget CE)
  2. ε = ρ·g/‖g‖                            (the direction that re-activates the hallucination most)
  3. g_neg = ∇L_neg(θ + ε); restore θ       (restored from a copy, so bit-exact, not θ + ε − ε)
  4. g_ret = ∇L_retain(θ)                   (at the unperturbed weights)
  5. update with λ₁·g_neg + g_ret           (the optimizer steps on the accumulated .grad)

Under DDP, (1) and (3) run without gradient synchronisation (each process perturbs its own replica with
its local gradient, as distributed SAM does), and the single all-reduce happens on the last backward,
which reduces the accumulated λ₁·g_neg + g_ret.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def global_grad_norm(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """L2 norm of all gradients together (None entries count as zero), in float32."""
    norms = [g.detach().float().norm() for g in grads if g is not None]
    if not norms:
        return torch.tensor(0.0)
    return torch.stack(norms).norm()


def sam_perturbation(grads: Sequence[torch.Tensor | None], rho: float, eps: float = 1e-12) -> list[torch.Tensor | None]:
    """ε = ρ·g/‖g‖ for each gradient (None stays None); all zeros when ρ = 0 or the gradient is zero."""
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    norm = global_grad_norm(grads)
    scale = 0.0 if rho == 0 or float(norm) == 0.0 else rho / (float(norm) + eps)
    return [None if g is None else (g.detach() * scale).to(g.dtype) for g in grads]


def apply_perturbation(
    params: Sequence[torch.Tensor], perturbation: Sequence[torch.Tensor | None]
) -> list[torch.Tensor]:
    """Add ε to each parameter in place; return copies of the original values for `restore_parameters`.

    Restoring from copies is bit-exact; subtracting ε again would not be (floating-point rounding).
    """
    if len(params) != len(perturbation):
        raise ValueError(f"{len(params)} parameters but {len(perturbation)} perturbation tensors")
    backup = []
    with torch.no_grad():
        for p, e in zip(params, perturbation):
            backup.append(p.detach().clone())
            if e is not None:
                p.add_(e.to(p.dtype))
    return backup


def restore_parameters(params: Sequence[torch.Tensor], backup: Sequence[torch.Tensor]) -> None:
    """Copy the saved values back into the parameters (in place, bit-exact)."""
    with torch.no_grad():
        for p, saved in zip(params, backup):
            p.copy_(saved)


def targeted_sam_step(
    params: Sequence[torch.Tensor],
    forget_backward: Callable[[float, bool], float],
    retain_backward: Callable[[bool], float] | None,
    rho: float,
    lambda1: float = 1.0,
) -> dict[str, float]:
    """Accumulate λ₁·∇L_neg(θ+ε) + ∇L_retain(θ) into the parameters' `.grad` (one Targeted-SAM step).

    `forget_backward(scale, sync)` must run backward on `scale · L_neg` at the current weights (adding to
    `.grad`) and return the loss value; `sync` says whether this backward may all-reduce gradients
    (DDP). `retain_backward(sync)` does the same for the retain loss; None when there is no retain term.
    `.grad` must be empty on entry (the trainer zeroes it after every optimizer step). With ρ = 0 this
    is exactly the plain step λ₁·∇L_neg(θ) + ∇L_retain(θ) (the extra pass is skipped).
    """
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    params = list(params)
    stats: dict[str, float] = {}
    last_is_forget = retain_backward is None
    if rho > 0:
        # (1) the ascent direction, from this process's gradient only: no all-reduce here.
        stats["forget_loss_at_theta"] = forget_backward(1.0, False)
        grads = [p.grad for p in params]
        stats["forget_grad_norm"] = float(global_grad_norm(grads))
        perturbation = sam_perturbation(grads, rho)
        for p in params:
            p.grad = None
        # (2)+(3) the forget gradient at θ + ε, then θ back exactly (also when the backward fails).
        backup = apply_perturbation(params, perturbation)
        try:
            stats["forget_loss"] = forget_backward(lambda1, last_is_forget)
        finally:
            restore_parameters(params, backup)
    else:
        stats["forget_loss"] = forget_backward(lambda1, last_is_forget)
    if retain_backward is not None:
        # (4) at θ; the one synchronised backward reduces the accumulated λ₁·g_neg + g_ret.
        stats["retain_loss"] = retain_backward(True)
    return stats


def random_perturbation(params: Sequence[torch.Tensor], rho: float, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction over all parameters, scaled to global norm ρ (drawn on CPU for reproducibility)."""
    draws = [torch.randn(p.shape, generator=generator, dtype=torch.float32) for p in params]
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in draws))
    return [(d * (rho / norm)).to(device=p.device, dtype=p.dtype) for d, p in zip(draws, params)]


def sharpness_probe(
    params: Sequence[torch.Tensor],
    forget_ce: Callable[[], torch.Tensor],
    rho: float,
    num_random: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """How much the forget loss moves under weight perturbations of norm ρ (flatter = smaller).

    `forget_ce()` returns the mean cross-entropy of the forget (hallucinated) targets at the current
    weights, differentiably. Reported:
      * `random`: mean of CE(θ+ε) − CE(θ) over `num_random` Gaussian directions of norm ρ;
      * `random_abs`: the mean absolute change;
      * `adversarial`: CE(θ) − CE(θ+ε*) with ε* = −ρ·∇CE/‖∇CE‖, the first-order worst case for
        re-learning: how far the forget loss falls (the hallucination comes back) within radius ρ.
    The parameters are restored bit-exactly after every probe.
    """
    params = list(params)
    with torch.no_grad():
        base = float(forget_ce())
    generator = torch.Generator().manual_seed(seed)
    changes = []
    for _ in range(num_random):
        backup = apply_perturbation(params, random_perturbation(params, rho, generator))
        try:
            with torch.no_grad():
                changes.append(float(forget_ce()) - base)
        finally:
            restore_parameters(params, backup)
    grads = torch.autograd.grad(forget_ce(), params, allow_unused=True)
    descent = sam_perturbation([None if g is None else -g for g in grads], rho)
    backup = apply_perturbation(params, descent)
    try:
        with torch.no_grad():
            adversarial = base - float(forget_ce())
    finally:
        restore_parameters(params, backup)
    return {
        "forget_ce": base,
        "random": sum(changes) / max(len(changes), 1),
        "random_abs": sum(abs(c) for c in changes) / max(len(changes), 1),
        "adversarial": adversarial,
    }
