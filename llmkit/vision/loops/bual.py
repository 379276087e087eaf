"""BUAL's training recipe (Zong et al., ECCV 2024): positive learning, then random-label negative learning.

One network, two heads on a shared backbone. Head P is trained with CE on the labelled known set
(positive learning, PL). Then the same network keeps training head N with *negative* learning on
the labelled set plus the pool, where every pool example gets a fresh random class label at every
step and a complementary label c̄ ≠ label, loss −log(1 − p^N_c̄) (RLNL). Random labels carry no
class information, so examples the backbone cannot tie to a known class (unknowns) drift to
confident-but-arbitrary head-N outputs, while informative known examples stay uncertain.

Outputs are per-row scores for every row of x: u_pos = head-P max-probability right after PL, and
u_neg = head-N max-probability summed over the NL checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.loops.common import fit
from llmkit.vision.losses.evidential import CrossEntropy
from llmkit.vision.losses.openset import complementary_label_loss
from llmkit.vision.models import MLP


@dataclass
class BUALScores:
    """Per-row (every row of x) head-P and accumulated head-N max-probabilities, and NL steps run."""

    u_pos: np.ndarray
    u_neg: np.ndarray
    nl_steps: int


def random_complementary_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn class different from each label (offset 1..K-1 modulo K)."""
    offsets = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + offsets) % num_classes


def max_probability(logits: torch.Tensor) -> np.ndarray:
    """max_k softmax(logits)_k per row."""
    return torch.softmax(logits, 1).max(1).values.numpy()


def train_bual(
    x: torch.Tensor,
    labelled_idx: np.ndarray,
    labels: np.ndarray,
    pool_idx: np.ndarray,
    num_known: int,
    *,
    budget: int,
    seed: int = 0,
    pl_steps: int = 150,
    nl_steps: int = 150,
    check_every: int = 10,
    patience: int = 5,
    lr: float = 1e-3,
    hidden=(128, 128),
) -> BUALScores:
    """Run PL then RLNL; stop NL early once the would-be query (the `budget` lowest accumulated u_neg in the
    pool, a label-free proxy for the reference's known-count rule) is unchanged for `patience` checks."""
    if len(labelled_idx) != len(labels):
        raise VisionError("labelled_idx and labels differ in length")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MLP(x.shape[1], num_known, hidden, num_heads=2)
    labelled_x, labelled_y = x[torch.as_tensor(labelled_idx)], torch.as_tensor(labels, dtype=torch.int64)
    head_p = lambda outputs, y: CrossEntropy()(outputs.heads[0], y)
    fit(model, labelled_x, labelled_y, head_p, steps=pl_steps, lr=lr, seed=seed)
    model.eval()
    with torch.no_grad():
        u_pos = max_probability(model(x).heads[0])

    pool_x = x[torch.as_tensor(pool_idx)]
    nl_x = torch.cat([labelled_x, pool_x])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    u_neg = np.zeros(x.shape[0])
    last_pick, unchanged, step = None, 0, 0
    for step in range(1, nl_steps + 1):
        model.train()
        pool_labels = torch.randint(0, num_known, (len(pool_idx),), generator=generator)  # fresh every step
        nl_labels = random_complementary_labels(torch.cat([labelled_y, pool_labels]), num_known, generator)
        optimiser.zero_grad()
        complementary_label_loss(model(nl_x).heads[1], nl_labels).backward()
        optimiser.step()
        if step % check_every == 0:
            model.eval()
            with torch.no_grad():
                u_neg += max_probability(model(x).heads[1])
            pick = frozenset(np.asarray(pool_idx)[np.argsort(u_neg[pool_idx], kind="stable")[:budget]].tolist())
            unchanged = unchanged + 1 if pick == last_pick else 0
            last_pick = pick
            if unchanged >= patience:
                break
    if step < check_every:  # too few NL steps for a checkpoint: score the final state once
        model.eval()
        with torch.no_grad():
            u_neg += max_probability(model(x).heads[1])
    return BUALScores(u_pos, u_neg, step)
