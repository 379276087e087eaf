"""DCFS's training recipe (from the abstract's sketch): one backbone, two C-way evidential heads.

Known rows: DPC's evidential loss on both heads. Queried unknowns: KL( Dir(α/c) ‖ Dir(1) ), which is 0
exactly when a head gives no evidence (α = c). Both heads: the discrepancy loss, reducing the heads'
disagreement on known rows and amplifying it on unknown rows, so the discrepancy flags hard knowns.
"""

from __future__ import annotations

import numpy as np
import torch

from llmkit.vision.losses.evidential import dirichlet_concentration, dirichlet_kl_to_uniform, dpc_loss
from llmkit.vision.losses.openset import head_discrepancy_loss
from llmkit.vision.models import MLP


def train_dcfs(
    x: torch.Tensor,
    labelled_idx: np.ndarray,
    labelled_y: np.ndarray,
    num_known: int,
    *,
    seed: int = 0,
    steps: int = 150,
    lr: float = 1e-3,
    hidden=(128, 128),
    evidence_offset: float | None = None,
    discrepancy_weight: float = 1.0,
) -> MLP:
    """Full-batch Adam on Σ_heads [DPC(known) + no-evidence KL(unknown)] + w·discrepancy loss."""
    torch.manual_seed(seed)
    model = MLP(x.shape[1], num_known, hidden, num_heads=2)
    rows = x[torch.as_tensor(labelled_idx)]
    unknown = torch.as_tensor(labelled_y < 0)
    known_y = torch.as_tensor(labelled_y[labelled_y >= 0], dtype=torch.int64)
    offset = 10.0 / num_known if evidence_offset is None else evidence_offset
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        out = model(rows)
        alphas = [dirichlet_concentration(h, offset) for h in out.heads[:2]]
        loss = rows.new_zeros(())
        for head, alpha in zip(out.heads[:2], alphas):
            if (~unknown).any():
                loss = loss + dpc_loss(head[~unknown], known_y, evidence_offset=offset)
            if unknown.any():
                loss = loss + dirichlet_kl_to_uniform(alpha[unknown] / offset).mean()
        probs = [a / a.sum(1, keepdim=True) for a in alphas]
        loss = loss + discrepancy_weight * head_discrepancy_loss(probs[0], probs[1], unknown)
        loss.backward()
        optimiser.step()
    return model
