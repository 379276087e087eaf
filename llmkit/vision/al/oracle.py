"""Oracles: answer label queries by index, with a cost; the open-set oracle may answer UNKNOWN."""

from __future__ import annotations

import numpy as np

from llmkit.vision import VisionError

#: What an open-set oracle answers for an example whose class is not one of the known classes.
UNKNOWN = -1


class Oracle:
    """Label lookup by index (ALiPy's `Oracle.query_by_index`), with an optional per-example cost.

    With `known_classes` it becomes an open-set oracle: known classes are answered remapped to
    0..C-1 (in the given order), every other class as `UNKNOWN`. Unknown answers still cost —
    that wasted budget is exactly what open-set strategies try to avoid.
    """

    def __init__(self, labels, cost=None, known_classes=None):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise VisionError(f"oracle labels must be 1-D, got shape {labels.shape}")
        self.known_classes = None if known_classes is None else tuple(int(c) for c in known_classes)
        if self.known_classes is not None:
            remap = {c: i for i, c in enumerate(self.known_classes)}
            labels = np.array([remap.get(int(y), UNKNOWN) for y in labels], dtype=np.int64)
        self._labels = labels
        self._cost = np.ones(labels.size) if cost is None else np.asarray(cost, dtype=np.float64)
        if self._cost.shape != labels.shape:
            raise VisionError(f"cost has shape {self._cost.shape}, labels {labels.shape}")

    def __len__(self) -> int:
        return self._labels.size

    def query_by_index(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Return (labels, costs) for the given indices; UNKNOWN (-1) marks open-set answers."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise VisionError(f"oracle queried index outside [0, {len(self) - 1}]")
        return self._labels[indices].copy(), self._cost[indices].copy()


def query_precision(answers) -> float:
    """Fraction of oracle answers that are known-class labels (the open-set AL headline metric)."""
    answers = np.asarray(answers)
    if answers.size == 0:
        raise VisionError("query_precision of an empty query is undefined")
    return float(np.mean(answers != UNKNOWN))
