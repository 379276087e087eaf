"""A small federated-learning simulator: Dirichlet non-IID client splits and FedAvg, all in one process.

Used by the FLAIN check (backdoor defence); FairFAL's federated AL is not built yet.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.vision import VisionError


def dirichlet_split(labels: np.ndarray, num_clients: int, beta: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Split example indices among clients: each class's examples are divided by proportions ~ Dir(β·1).

    Small β (0.1) gives extreme non-IID clients, large β (100) nearly IID ones.
    """
    if num_clients < 1 or beta <= 0:
        raise VisionError(f"need num_clients >= 1 and beta > 0, got {num_clients}, {beta}")
    labels = np.asarray(labels)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, beta))) * len(members)).astype(int)[:-1]
        for client, part in enumerate(np.split(members, cuts)):
            clients[client].extend(part.tolist())
    return [np.sort(np.array(c, dtype=np.int64)) for c in clients]


def average_state_dicts(states: list[dict], weights) -> dict:
    """Weighted average of model state dicts (FedAvg's aggregation; weights ∝ client data sizes)."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(states) != len(weights) or weights.sum() <= 0:
        raise VisionError("need one positive weight per client state")
    weights = weights / weights.sum()
    return {k: sum(float(w) * s[k].float() for w, s in zip(weights, states)).to(states[0][k].dtype) for k in states[0]}


def local_update(
    model, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int, generator: torch.Generator
) -> dict:
    """Plain SGD (momentum 0.9) on one client's data starting from the global model; returns the new state."""
    local = copy.deepcopy(model)
    optimiser = torch.optim.SGD(local.parameters(), lr=lr, momentum=0.9)
    local.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimiser.zero_grad()
            F.cross_entropy(local(x[batch]).logits, y[batch]).backward()
            optimiser.step()
    return local.state_dict()


def fedavg(
    model,
    client_data: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    rounds: int = 30,
    local_epochs: int = 2,
    lr: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
):
    """Run FedAvg with every client participating each round; returns (final model, initial state dict)."""
    generator = torch.Generator().manual_seed(seed)
    initial = copy.deepcopy(model.state_dict())
    sizes = [len(y) for _, y in client_data]
    for _ in range(rounds):
        states = [
            local_update(model, x, y, epochs=local_epochs, lr=lr, batch_size=batch_size, generator=generator)
            for x, y in client_data
            if len(y)
        ]
        model.load_state_dict(average_state_dicts(states, [s for s in sizes if s]))
    return model, initial
