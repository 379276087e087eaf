"""Noisy-label training: a loss baseline (CE vs DPC's evidential loss) and DPC-style clean-sample selection.

`select` methods warm up on all noisy labels, score every example, split the scores with a
2-component GMM, and keep training on the examples judged clean. DPC scores by the label margin
on raw logits; the CE baseline by the per-example loss (DivideMix's rule). This is the selection
half of DPC only: the two-network co-divide and MixMatch semi-supervised stage are not built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.vision import VisionError
from llmkit.vision.gmm import two_gmm_posterior
from llmkit.vision.loops.common import accuracy, fit
from llmkit.vision.losses.evidential import CrossEntropy, DPCLoss, label_margin
from llmkit.vision.models import MLP

#: "bldr-no-rw" is BLDR without the dynamic reweighting (weights stay 1, noise-ratio estimate 0).
NOISY_METHODS = ("ce", "dpc", "ce+select", "dpc+select", "bldr", "bldr-no-rw")


def margin_clean_posterior(logits: torch.Tensor, noisy_labels: torch.Tensor, seed: int = 0) -> np.ndarray:
    """DPC selection: P(clean) = GMM posterior of the high-margin mode of min-max-normalised label margins."""
    return two_gmm_posterior(label_margin(logits, noisy_labels).numpy(), "high", seed=seed)


def loss_clean_posterior(logits: torch.Tensor, noisy_labels: torch.Tensor, seed: int = 0) -> np.ndarray:
    """DivideMix selection: P(clean) = GMM posterior of the low-loss mode of per-example CE."""
    losses = F.cross_entropy(logits, noisy_labels, reduction="none").numpy()
    return two_gmm_posterior(losses, "low", seed=seed)


@dataclass
class NoisyConfig:
    """Training settings (defaults: the §1 CPU check, shortened to fit a 2-core box)."""

    epochs: int = 60
    warmup_epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    hidden: tuple = (256, 256)
    threshold: float = 0.5


@dataclass
class NoisyResult:
    """Test accuracy (%), and for selection methods the size and label precision of the kept set."""

    accuracy: float
    kept: int | None = None
    kept_precision: float | None = None
    curve: list | None = None  # test accuracy after each epoch


def train_noisy(
    method: str,
    x: torch.Tensor,
    noisy_y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    seed: int = 0,
    config: NoisyConfig | None = None,
    clean_y: torch.Tensor | None = None,
) -> NoisyResult:
    """Train one of `NOISY_METHODS` on noisy labels and report test accuracy.

    `clean_y` (optional) is only used to report the label precision of the kept set, never to train.
    """
    if method not in NOISY_METHODS:
        raise VisionError(f"unknown noisy-label method {method!r}; choose one of {', '.join(NOISY_METHODS)}")
    config = config or NoisyConfig()
    if method.startswith("bldr"):
        never = config.epochs + 1  # reweighting never starts
        return train_bldr(
            x,
            noisy_y,
            x_test,
            y_test,
            seed=seed,
            config=config,
            update_weights_from=never if method == "bldr-no-rw" else None,
        )
    curve: list[float] = []
    record = lambda epoch, model: curve.append(accuracy(model, x_test, y_test))
    torch.manual_seed(seed)
    num_classes = int(max(noisy_y.max(), y_test.max())) + 1
    model = MLP(x.shape[1], num_classes, config.hidden)
    loss = DPCLoss() if method.startswith("dpc") else CrossEntropy()
    common = dict(batch_size=config.batch_size, lr=config.lr, on_epoch_end=record)
    if not method.endswith("+select"):
        fit(model, x, noisy_y, loss, epochs=config.epochs, seed=seed, **common)
        return NoisyResult(accuracy(model, x_test, y_test), curve=curve)

    fit(model, x, noisy_y, loss, epochs=config.warmup_epochs, seed=seed, **common)
    model.eval()
    with torch.no_grad():
        logits = model(x).logits
    score = margin_clean_posterior if method.startswith("dpc") else loss_clean_posterior
    keep = torch.as_tensor(score(logits, noisy_y, seed) > config.threshold)
    if keep.sum() == 0:
        raise VisionError("clean-sample selection kept no examples")
    fit(model, x[keep], noisy_y[keep], loss, epochs=config.epochs - config.warmup_epochs, seed=seed + 1, **common)
    precision = None if clean_y is None else float((noisy_y[keep] == clean_y[keep]).float().mean() * 100)
    return NoisyResult(accuracy(model, x_test, y_test), int(keep.sum()), precision, curve)


def train_bldr(
    x: torch.Tensor,
    noisy_y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    seed: int = 0,
    config: NoisyConfig | None = None,
    update_weights_from: int | None = None,
    over_param_lr: float = 10.0,
) -> NoisyResult:
    """BLDR-lite: PL head (over-parameterised CE) + NL head (complementary labels), both weighted by the NL
    head's belief in each given label from epoch `update_weights_from` on (reference: 20 of 300 epochs;
    default here: a third of the run). u, v are per-example parameters trained with plain SGD (lr 10)."""
    from llmkit.vision.losses.noisy import bldr_negative_loss, bldr_positive_loss, nl_sample_weights

    config = config or NoisyConfig()
    start_weights = config.epochs // 3 if update_weights_from is None else update_weights_from
    num_classes = int(max(noisy_y.max(), y_test.max())) + 1
    torch.manual_seed(seed)
    model = MLP(x.shape[1], num_classes, config.hidden, num_heads=2)
    u = torch.nn.Parameter(1e-8 * torch.randn(len(x), num_classes))
    v = torch.nn.Parameter(1e-8 * torch.randn(len(x), num_classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    over_param_optimiser = torch.optim.SGD([u, v], lr=over_param_lr)
    generator = torch.Generator().manual_seed(seed)
    weights, noise_ratio, curve = torch.ones(len(x)), 0.0, []
    for epoch in range(config.epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(config.batch_size):
            optimiser.zero_grad(), over_param_optimiser.zero_grad()
            out = model(x[batch])
            loss = bldr_positive_loss(
                out.heads[0], noisy_y[batch], u[batch], v[batch], weights=weights[batch], noise_ratio=noise_ratio
            ) + bldr_negative_loss(out.heads[1], noisy_y[batch], weights[batch])
            loss.backward()
            optimiser.step(), over_param_optimiser.step()
        if epoch + 1 >= start_weights:
            model.eval()
            with torch.no_grad():
                weights, noise_ratio = nl_sample_weights(model(x).heads[1], noisy_y)
        curve.append(accuracy(model, x_test, y_test))
    return NoisyResult(curve[-1], curve=curve)


PLL_METHODS = ("uniform", "self-training", "mogd")


def train_partial_label(
    method: str,
    x: torch.Tensor,
    candidates: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    hidden=(128,),
    virtual_lr: float = 0.1,
    weight_step: float = 1.0,
) -> float:
    """Partial-label training with candidate weights from `method` in PLL_METHODS; returns test accuracy (%).

    uniform: fixed 1/|S_i|; self-training: ∝ model probabilities (PRODEN-style, recomputed every batch);
    mogd: meta-gradient from the clean validation set (x_val, y_val) after a virtual SGD step of `virtual_lr`.
    """
    from llmkit.vision.losses.partial import (
        meta_weight_gradient,
        normalise_over_candidates,
        self_training_weights,
        weighted_candidate_loss,
    )

    if method not in PLL_METHODS:
        raise VisionError(f"unknown partial-label method {method!r}; choose one of {', '.join(PLL_METHODS)}")
    torch.manual_seed(seed)
    model = MLP(x.shape[1], candidates.shape[1], hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    weights = normalise_over_candidates(torch.ones_like(candidates), candidates)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            if method == "self-training":
                weights[batch] = self_training_weights(model(x[batch]).logits, candidates[batch])
            elif method == "mogd":
                grad = meta_weight_gradient(model, x[batch], weights[batch], x_val, y_val, virtual_lr)
                # Exponentiated-gradient (mirror) step: stays on the candidate simplex without hard zeroing,
                # so one noisy 50-example meta-gradient cannot wipe out the true label's weight.
                weights[batch] = normalise_over_candidates(
                    weights[batch] * torch.exp((-weight_step * grad).clamp(-30, 30)), candidates[batch]
                )
            optimiser.zero_grad()
            weighted_candidate_loss(model(x[batch]).logits, weights[batch].detach()).backward()
            optimiser.step()
    return accuracy(model, x_test, y_test)
