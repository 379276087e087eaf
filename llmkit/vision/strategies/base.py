"""The query-strategy contract (ALiPy's): `select` returns a subset of the unlabelled pool's indices.

A strategy never trains. It reads predictions through a `scorer` — `scorer.predict(idx, role)`
returns the `Outputs` of the model playing `role` ("target": the C-way classifier; "detector": the
C+1-way known/unknown model) — and declares the roles it needs in `requires`, so the loop knows
what to train. Adaptive knobs (EAOA's k1, ...) live in a plain `state` dict that the loop saves
with every round, which is what makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.models import Outputs


class QueryResult(NamedTuple):
    """Selected pool indices (in selection order) and, optionally, one utility per pool example."""

    indices: np.ndarray
    utilities: np.ndarray | None = None


class Scorer(Protocol):
    """Anything that can run a trained model on examples by index."""

    def predict(self, idx: np.ndarray, role: str = "target") -> Outputs:
        """Outputs of the model playing `role` on examples `idx`."""
        ...


class ModelScorer:
    """A `Scorer` over a feature tensor and a dict of trained models keyed by role."""

    def __init__(self, x: torch.Tensor, models: dict, batch_size: int = 4096):
        self.x, self.models, self.batch_size = x, dict(models), batch_size

    def get(self, role: str):
        """The raw object trained for `role` (for strategies whose role is not a plain model, e.g. BUAL's scores)."""
        if role not in self.models:
            raise VisionError(f"strategy needs a {role!r} model but the scorer has {sorted(self.models)}")
        return self.models[role]

    def predict(self, idx, role: str = "target") -> Outputs:
        """Run the `role` model in eval mode, without gradients, on rows `idx` of x."""
        model = self.get(role)
        model.eval()
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        with torch.no_grad():
            parts = [model(self.x[idx[i : i + self.batch_size]]) for i in range(0, len(idx), self.batch_size)]
        heads = tuple(torch.cat([p.heads[h] for p in parts]) for h in range(len(parts[0].heads)))
        return Outputs(heads[0], heads, torch.cat([p.features for p in parts]))


def check_query(pool_idx, budget: int) -> np.ndarray:
    """Validate (pool, budget) and return the pool as an int64 array; errors name the problem."""
    pool_idx = np.asarray(pool_idx, dtype=np.int64).reshape(-1)
    if pool_idx.size == 0:
        raise VisionError("the unlabelled pool is empty: nothing to query")
    if np.unique(pool_idx).size != pool_idx.size:
        raise VisionError("the unlabelled pool contains duplicate indices")
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise VisionError(f"budget must be a positive integer, got {budget!r}")
    if budget > pool_idx.size:
        raise VisionError(f"budget {budget} exceeds the unlabelled pool size {pool_idx.size}")
    return pool_idx


def top_k_positions(utilities, k: int) -> np.ndarray:
    """Positions of the k largest utilities, largest first; ties keep pool order (stable)."""
    utilities = np.asarray(utilities, dtype=np.float64)
    return np.argsort(-utilities, kind="stable")[:k]


class QueryStrategy:
    """Optional base class: strategies only need `select`; this supplies the defaults for the rest."""

    name = "base"
    requires: frozenset = frozenset({"target"})

    def initial_state(self) -> dict:
        """The adaptive state before the first round (none by default)."""
        return {}

    def update_state(self, state: dict, query_precision: float) -> dict:
        """Return the state after a round with the given query precision (unchanged by default)."""
        return dict(state)

    def detector_loss(self, num_known: int):
        """The loss the loop should train the detector with (None: this strategy needs no detector)."""
        return None

    def select(
        self,
        pool_idx,
        budget: int,
        *,
        scorer: Scorer,
        labelled_idx=None,
        labelled_y=None,
        state: dict | None = None,
        rng: np.random.Generator | None = None,
        return_utilities: bool = False,
    ):
        """Return `budget` indices from `pool_idx` (and a `QueryResult` with utilities if asked)."""
        raise NotImplementedError


def finish(pool_idx: np.ndarray, positions: np.ndarray, utilities, return_utilities: bool):
    """Map chosen pool positions back to pool indices; wrap in QueryResult when utilities are asked for."""
    indices = pool_idx[np.asarray(positions, dtype=np.int64)]
    if np.unique(indices).size != indices.size:
        raise VisionError("strategy selected an index twice")  # a bug in the strategy, caught early
    if return_utilities:
        return QueryResult(indices, None if utilities is None else np.asarray(utilities, dtype=np.float64))
    return indices
