"""IndexCollection: an ordered set of example indices (ALiPy's noun), pure Python/numpy."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from llmkit.vision import VisionError


def _as_int_list(indices) -> list[int]:
    if isinstance(indices, (int, np.integer)):
        return [int(indices)]
    out = []
    for i in np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices).reshape(-1):
        if not float(i).is_integer():
            raise VisionError(f"indices must be integers, got {i!r}")
        out.append(int(i))
    return out


class IndexCollection:
    """Insertion-ordered set of integer indices: labelled, unlabelled, or "queried unknown" examples.

    Order is kept so that iterating (and therefore random sampling and saving) is reproducible.
    `add` of an index already present and `discard` of an absent one are errors when `strict` is set,
    because in an AL loop either means the bookkeeping went wrong.
    """

    def __init__(self, indices: Iterable[int] = (), *, strict: bool = True):
        self._items: dict[int, None] = {}
        self.strict = strict
        self.update(indices)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def __contains__(self, index) -> bool:
        return int(index) in self._items

    def __eq__(self, other) -> bool:
        return isinstance(other, IndexCollection) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"IndexCollection({list(self)[:8]}{'…' if len(self) > 8 else ''}, n={len(self)})"

    @property
    def index(self) -> np.ndarray:
        """The indices as an int64 numpy array, in insertion order."""
        return np.fromiter(self._items, dtype=np.int64, count=len(self._items))

    def add(self, index: int) -> None:
        """Add one index (error if present and strict)."""
        index = int(index)
        if self.strict and index in self._items:
            raise VisionError(f"index {index} is already in the collection")
        self._items[index] = None

    def update(self, indices) -> None:
        """Add many indices, in order."""
        for i in _as_int_list(indices):
            self.add(i)

    def discard(self, index: int) -> None:
        """Remove one index (error if absent and strict)."""
        index = int(index)
        if index not in self._items:
            if self.strict:
                raise VisionError(f"index {index} is not in the collection")
            return
        del self._items[index]

    def difference_update(self, indices) -> None:
        """Remove many indices."""
        for i in _as_int_list(indices):
            self.discard(i)

    def random_sampling(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Draw `count` distinct indices uniformly (without removing them)."""
        if count > len(self):
            raise VisionError(f"cannot sample {count} indices from a collection of {len(self)}")
        return rng.choice(self.index, count, replace=False)

    def copy(self) -> "IndexCollection":
        """An independent copy with the same order."""
        return IndexCollection(self.index, strict=self.strict)
