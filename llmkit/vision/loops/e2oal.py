"""E2OAL's training recipe: one backbone, a base head (C classes, CE on known examples) and an auxiliary
head (C + S outputs: known classes + unknown sub-classes, evidential loss on every labelled example)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.vision.losses.evidential import edl_loss
from llmkit.vision.models import MLP


def train_e2oal(
    x: torch.Tensor,
    labelled_idx: np.ndarray,
    labelled_y: np.ndarray,
    aux_target: np.ndarray,
    num_known: int,
    *,
    seed: int = 0,
    steps: int = 150,
    lr: float = 1e-3,
    hidden=(128, 128),
    annealing_fraction: float = 0.05,
) -> MLP:
    """Full-batch Adam on CE(base head, known rows) + EDL(aux head, all rows).

    The KL term's weight ramps min(1, step / (annealing_fraction·steps)) — the reference's min(1, epoch/10)
    over 200 epochs, rescaled to this step count.
    """
    aux_classes = int(max(aux_target.max() + 1, num_known + 1))  # at least one unknown column for the margin
    torch.manual_seed(seed)
    model = MLP(x.shape[1], num_known, hidden, num_heads=2, head_classes=[num_known, aux_classes])
    rows = x[torch.as_tensor(labelled_idx)]
    known = torch.as_tensor(labelled_y >= 0)
    known_y = torch.as_tensor(labelled_y[labelled_y >= 0], dtype=torch.int64)
    aux_y = torch.as_tensor(aux_target, dtype=torch.int64)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    ramp = max(1.0, annealing_fraction * steps)
    model.train()
    for step in range(steps):
        optimiser.zero_grad()
        out = model(rows)
        loss = edl_loss(out.heads[1], aux_y, annealing=min(1.0, step / ramp))
        if known.any():
            loss = loss + F.cross_entropy(out.heads[0][known], known_y)
        loss.backward()
        optimiser.step()
    return model
