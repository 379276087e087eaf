"""FairFAL (Zong & Huang, CVPR 2026): class-fair federated active learning under non-IID data and global imbalance.

Per client and query cycle:
1. Which model measures uncertainty: compare the global and a local-only model's mean predicted class
   distributions on a class-balanced resample of the client's labelled set — discrepancy
   d = ½·mean_k |g_k − l_k| / (½g_k + ½l_k) — and the global model's imbalance ρ_g = min_k g_k / max_k g_k
   (averaged over clients, ρ̄_g). Score 1 − ½(d + ρ̄_g) > 0.75 → global model, else local.
2. Uncertainty: normalised entropy H/log K of the chosen model.
3. Pseudo-classes: cosine similarity of global-model embeddings to labelled class prototypes
   (softmax at T = 1.5; classes without labelled examples masked).
4. Balanced selection: an equal quota per pseudo-class (surplus redistributed); within a class, the
   4×quota most uncertain candidates, then greedy k-center on BADGE gradient embeddings (global-model
   features; probabilities from the global model if ρ̄_g < 0.5, else the local one), seeded by that
   class's labelled examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.strategies.base import QueryStrategy, check_query, finish


def distribution_discrepancy(global_mean: np.ndarray, local_mean: np.ndarray) -> float:
    """d = ½ · mean_k |g_k − l_k| / (½g_k + ½l_k) between two mean class distributions."""
    g, loc = np.asarray(global_mean, dtype=np.float64), np.asarray(local_mean, dtype=np.float64)
    return float(0.5 * np.mean(np.abs(g - loc) / np.maximum(0.5 * g + 0.5 * loc, 1e-12)))


def imbalance_ratio(mean_distribution: np.ndarray) -> float:
    """ρ = min_k g_k / max_k g_k of a mean predicted class distribution (1 = balanced)."""
    g = np.asarray(mean_distribution, dtype=np.float64)
    return float(g.min() / max(g.max(), 1e-12))


def use_global_model(discrepancy: float, mean_global_imbalance: float, threshold: float = 0.75) -> bool:
    """FairFAL's rule: trust the global model for uncertainty when 1 − ½(d + ρ̄_g) > threshold."""
    return 1 - 0.5 * (discrepancy + mean_global_imbalance) > threshold


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) / log K per row, in [0, 1]."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(1) / math.log(probs.shape[1])


def prototype_pseudo_classes(
    embeddings: torch.Tensor,
    labelled_embeddings: torch.Tensor,
    labelled_y: torch.Tensor,
    num_classes: int,
    temperature: float = 1.5,
) -> torch.Tensor:
    """Pseudo-class per row: argmax of softmax(cos(e, prototype_k)/T) over classes that have labelled examples."""
    e = torch.nn.functional.normalize(embeddings, dim=1)
    present = torch.bincount(labelled_y, minlength=num_classes) > 0
    if not present.any():
        raise VisionError("no labelled examples: class prototypes are undefined")
    prototypes = torch.zeros(num_classes, embeddings.shape[1])
    prototypes.index_add_(0, labelled_y, torch.nn.functional.normalize(labelled_embeddings, dim=1))
    prototypes = torch.nn.functional.normalize(prototypes, dim=1)
    logits = (e @ prototypes.T) / temperature
    logits[:, ~present] = float("-inf")
    return torch.softmax(logits, 1).argmax(1)


def gradient_embeddings(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """BADGE: the last-layer CE gradient at the predicted label, (p − onehot(ŷ)) ⊗ features, flattened [N, K·D]."""
    residual = probs - torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
    return (residual[:, :, None] * features[:, None, :]).flatten(1)


def k_center_greedy(points: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center: repeatedly take the point farthest from the anchors and everything chosen so far.

    With no anchors, the first pick is the point farthest from the mean.
    """
    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    seeds = np.asarray(anchors, dtype=np.float64).reshape(-1, points.shape[1])
    if len(seeds) == 0:
        seeds = points.mean(0, keepdims=True)
    nearest = np.min(((points[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    chosen = []
    for _ in range(k):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
        nearest[pick] = -1.0  # never pick twice
    return np.array(chosen, dtype=np.int64)


def balanced_quotas(available: np.ndarray, budget: int) -> np.ndarray:
    """Equal quota per class, capped by what each class has; the surplus goes to classes with room (repeatedly)."""
    available = np.asarray(available, dtype=np.int64)
    quotas = np.zeros_like(available)
    remaining = min(budget, int(available.sum()))
    while remaining > 0:
        open_classes = np.flatnonzero(quotas < available)
        share = max(1, remaining // len(open_classes))
        for c in open_classes:
            take = min(share, available[c] - quotas[c], remaining)
            quotas[c] += take
            remaining -= take
            if remaining == 0:
                break
    return quotas


def fairfal_select_positions(
    uncertainty: np.ndarray,
    pseudo_class: np.ndarray,
    grad_embeddings: np.ndarray,
    anchor_embeddings: np.ndarray,
    anchor_classes: np.ndarray,
    budget: int,
    num_classes: int,
    candidate_factor: int = 4,
) -> np.ndarray:
    """Per pseudo-class quota; top candidate_factor×quota by uncertainty; greedy k-center from the class's anchors."""
    quotas = balanced_quotas(np.bincount(pseudo_class, minlength=num_classes), budget)
    chosen = []
    for c in range(num_classes):
        if quotas[c] == 0:
            continue
        members = np.flatnonzero(pseudo_class == c)
        candidates = members[np.argsort(-uncertainty[members], kind="stable")[: candidate_factor * quotas[c]]]
        picks = k_center_greedy(grad_embeddings[candidates], anchor_embeddings[anchor_classes == c], quotas[c])
        chosen.extend(candidates[picks].tolist())
    return np.array(chosen, dtype=np.int64)


class FairFALSampling(QueryStrategy):
    """FairFAL for one client. Scorer roles: "global" (the FedAvg model) and "local" (the client's own model).
    State: {"mean_global_imbalance": ρ̄_g}, set by the federated loop from all clients before querying."""

    name = "fairfal"
    requires = frozenset({"global", "local"})

    def __init__(self, num_classes: int, threshold: float = 0.75, temperature: float = 1.5, candidate_factor: int = 4):
        self.num_classes, self.threshold = num_classes, threshold
        self.temperature, self.candidate_factor = temperature, candidate_factor

    def select(
        self,
        pool_idx,
        budget,
        *,
        scorer,
        labelled_idx=None,
        labelled_y=None,
        state=None,
        rng=None,
        return_utilities=False,
    ):
        """Class-balanced, uncertainty-then-diversity selection from this client's pool."""
        pool_idx = check_query(pool_idx, budget)
        if labelled_idx is None or len(labelled_idx) == 0:
            raise VisionError("FairFAL needs labelled examples on the client (prototypes and anchors)")
        state = state or {}
        rho_mean = float(state.get("mean_global_imbalance", 1.0))
        labelled_y_t = torch.as_tensor(np.asarray(labelled_y), dtype=torch.int64)
        # Class-balanced resample of the labelled set: equal count per present class (rng-free: cycle indices).
        per_class = [np.flatnonzero(labelled_y == c) for c in range(self.num_classes)]
        size = max(len(m) for m in per_class)
        balanced = np.concatenate([np.resize(m, size) for m in per_class if len(m)])
        g_mean = torch.softmax(scorer.predict(np.asarray(labelled_idx)[balanced], "global").logits, 1).mean(0).numpy()
        l_mean = torch.softmax(scorer.predict(np.asarray(labelled_idx)[balanced], "local").logits, 1).mean(0).numpy()
        trust_global = use_global_model(distribution_discrepancy(g_mean, l_mean), rho_mean, self.threshold)

        global_out, local_out = scorer.predict(pool_idx, "global"), scorer.predict(pool_idx, "local")
        uncertainty = normalised_entropy(torch.softmax((global_out if trust_global else local_out).logits, 1)).numpy()
        labelled_global = scorer.predict(np.asarray(labelled_idx), "global")
        pseudo = prototype_pseudo_classes(
            global_out.features, labelled_global.features, labelled_y_t, self.num_classes, self.temperature
        ).numpy()
        embed_probs = torch.softmax((global_out if rho_mean < 0.5 else local_out).logits, 1)
        grad_emb = gradient_embeddings(global_out.features, embed_probs).numpy()
        anchor_probs = torch.softmax(labelled_global.logits, 1)
        anchors = gradient_embeddings(labelled_global.features, anchor_probs).numpy()
        positions = fairfal_select_positions(
            uncertainty,
            pseudo,
            grad_emb,
            anchors,
            np.asarray(labelled_y),
            budget,
            self.num_classes,
            self.candidate_factor,
        )
        return finish(pool_idx, positions, uncertainty, return_utilities)
