"""Federated active learning (the FairFAL setting): non-IID clients with local pools, FedAvg each cycle.

Each cycle trains a global model with FedAvg on the clients' labelled data (fresh, seeded by
(seed, cycle)), measures balanced test accuracy, then every client queries its own budget from its
own pool. Closed-set: the oracle returns true labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.loops.common import derived_seed, fit
from llmkit.vision.loops.federated import dirichlet_split, fedavg
from llmkit.vision.losses.evidential import CrossEntropy
from llmkit.vision.models import MLP
from llmkit.vision.strategies.base import ModelScorer
from llmkit.vision.strategies.fairfal import FairFALSampling, imbalance_ratio
from llmkit.vision.strategies.uncertainty import RandomSampling, UncertaintySampling

FEDERATED_STRATEGIES = ("random", "entropy", "fairfal")


@dataclass
class FederatedALConfig:
    """Scaled-down FairFAL protocol (paper: 10 clients, 100 rounds, 5 local epochs, 5% queries up to 45%)."""

    num_clients: int = 10
    beta: float = 0.1
    initial_fraction: float = 0.1
    query_fraction: float = 0.1
    cycles: int = 4
    fl_rounds: int = 30
    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.05
    local_model_steps: int = 100
    hidden: tuple = (128,)


def long_tail_indices(labels: np.ndarray, imbalance: float, rng: np.random.Generator) -> np.ndarray:
    """Keep n_k = n_max · imbalance^(k/(K−1)) examples of class k (class 0 the head, class K−1 the tail)."""
    if not 0 < imbalance <= 1:
        raise VisionError(f"imbalance must be in (0, 1], got {imbalance}")
    classes = np.unique(labels)
    n_max = min(np.sum(labels == c) for c in classes)
    keep = []
    for rank, c in enumerate(classes):
        n = max(1, int(round(n_max * imbalance ** (rank / max(1, len(classes) - 1)))))
        keep.append(rng.choice(np.flatnonzero(labels == c), n, replace=False))
    return np.sort(np.concatenate(keep))


def balanced_accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-class recall (%) — the fair metric under class imbalance."""
    model.eval()
    with torch.no_grad():
        predicted = model(x).logits.argmax(1)
    recalls = [(predicted[y == c] == c).float().mean() for c in torch.unique(y)]
    return float(torch.stack(recalls).mean() * 100)


def federated_active_learning(
    strategy: str,
    x: torch.Tensor,
    y: np.ndarray,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    seed: int = 0,
    config: FederatedALConfig | None = None,
):
    """Run federated AL with `strategy` in FEDERATED_STRATEGIES; returns balanced test accuracy after each cycle's
    FedAvg (cycle 0 = initial labels) and the labelled fraction at each point."""
    if strategy not in FEDERATED_STRATEGIES:
        raise VisionError(
            f"unknown federated AL strategy {strategy!r}; choose one of {', '.join(FEDERATED_STRATEGIES)}"
        )
    config = config or FederatedALConfig()
    num_classes = int(max(y.max(), y_test.max())) + 1
    rng = np.random.default_rng(seed)
    clients = [c for c in dirichlet_split(y, config.num_clients, config.beta, rng) if len(c) > 1]
    labelled = [rng.choice(c, max(1, int(round(config.initial_fraction * len(c)))), replace=False) for c in clients]
    y_t = torch.as_tensor(y, dtype=torch.int64)
    sampler = {
        "random": RandomSampling(),
        "entropy": UncertaintySampling("entropy"),
        "fairfal": FairFALSampling(num_classes),
    }[strategy]
    curve, fractions = [], []
    for cycle in range(config.cycles + 1):
        torch.manual_seed(derived_seed(seed, cycle, 0))
        data = [(x[torch.as_tensor(owned)], y_t[torch.as_tensor(owned)]) for owned in labelled]
        global_model, _ = fedavg(
            MLP(x.shape[1], num_classes, config.hidden),
            data,
            rounds=config.fl_rounds,
            local_epochs=config.local_epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=derived_seed(seed, cycle, 1),
        )
        curve.append(balanced_accuracy(global_model, x_test, y_test))
        fractions.append(sum(len(owned) for owned in labelled) / sum(len(c) for c in clients))
        if cycle == config.cycles:
            break
        local_models = []
        if strategy == "fairfal":  # local-only models, and ρ̄_g over all clients before anyone queries
            ratios = []
            for k, owned in enumerate(labelled):
                torch.manual_seed(derived_seed(seed, cycle, 10 + k))
                local_models.append(
                    fit(
                        MLP(x.shape[1], num_classes, config.hidden),
                        data[k][0],
                        data[k][1],
                        CrossEntropy(),
                        steps=config.local_model_steps,
                        lr=1e-3,
                    )
                )
                global_model.eval()
                with torch.no_grad():
                    ratios.append(imbalance_ratio(torch.softmax(global_model(data[k][0]).logits, 1).mean(0).numpy()))
            state = {"mean_global_imbalance": float(np.mean(ratios))}
        for k, (pool_all, owned) in enumerate(zip(clients, labelled)):
            pool = np.setdiff1d(pool_all, owned)
            budget = min(len(pool), max(1, int(round(config.query_fraction * len(pool_all)))))
            if budget == 0:
                continue
            models = {"target": global_model, "global": global_model}
            if local_models:
                models["local"] = local_models[k]
            picked = sampler.select(
                pool,
                budget,
                scorer=ModelScorer(x, models),
                labelled_idx=owned,
                labelled_y=y[owned],
                state=state if strategy == "fairfal" else None,
                rng=np.random.default_rng([seed, cycle, k]),
            )
            labelled[k] = np.concatenate([owned, picked])
    return curve, fractions
