"""Shared training helpers for the loops: derived seeds, a full-/mini-batch fit, accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmkit.vision import VisionError


def derived_seed(*keys: int) -> int:
    """A 32-bit seed determined by a tuple of integers (e.g. (run seed, round, role)).

    Seeding every training call from its own key — rather than from one running RNG — is what lets a
    resumed run reproduce the uninterrupted one: round r's models never depend on earlier RNG draws.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, *, steps: int | None = None,
        epochs: int | None = None, batch_size: int | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
        seed: int = 0, on_epoch_end=None) -> nn.Module:
    """Train `model` with Adam on (x, y) using `loss_fn(outputs, y)`.

    Full batch for `steps` steps (default), or mini-batches of `batch_size` for `epochs` epochs.
    The shuffling order comes from `seed`, so the result depends only on the arguments.
    `on_epoch_end(epoch, model)` (mini-batch mode) is called after each epoch, e.g. to record a
    learning curve; it must leave the model in train mode.
    """
    if x.shape[0] != y.shape[0]:
        raise VisionError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise VisionError("cannot train on an empty set")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    if batch_size is None:
        for _ in range(steps if steps is not None else 100):
            optimiser.zero_grad()
            loss_fn(model(x), y).backward()
            optimiser.step()
        return model
    for epoch in range(epochs if epochs is not None else 1):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start:start + batch_size]
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
            model.train()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: int = 0) -> float:
    """Top-1 accuracy (%) of `model`'s head `head` on (x, y)."""
    model.eval()
    with torch.no_grad():
        predicted = model(x).heads[head].argmax(1)
    return float((predicted == y).float().mean() * 100)
