"""StoppingCriteria: when an AL run ends (ALiPy's kinds), read from the StateIO it watches."""

from __future__ import annotations

import time

from llmkit.vision import VisionError

STOPPING_KINDS = (None, "num_of_queries", "cost_limit", "percent_of_unlabel", "time_limit")


class StoppingCriteria:
    """Stop an AL loop on: None (pool exhausted), 'num_of_queries' (query rounds), 'cost_limit'
    (total oracle cost), 'percent_of_unlabel' (fraction of the initial pool queried, 0–1) or
    'time_limit' (seconds since `reset`). Call `update_information(stateio)` after each round.
    """

    def __init__(self, kind: str | None = None, value: float | None = None):
        if kind not in STOPPING_KINDS:
            raise VisionError(f"unknown stopping criterion {kind!r}; choose one of {STOPPING_KINDS}")
        if kind is not None and (value is None or value < 0):
            raise VisionError(f"stopping criterion {kind!r} needs a non-negative value, got {value!r}")
        self.kind, self.value = kind, value
        self.reset()

    def reset(self) -> None:
        """Forget progress and restart the clock."""
        self._start = time.monotonic()
        self._num_queries = 0
        self._cost = 0.0
        self._fraction_queried = 0.0
        self._pool_left = None

    def update_information(self, stateio) -> None:
        """Read progress (queries, cost, remaining pool) from a StateIO."""
        self._num_queries = stateio.num_of_query
        self._cost = stateio.cost_inall
        initial = len(stateio.init_U)
        queried = sum(len(s["select_index"]) for s in stateio)
        self._fraction_queried = queried / initial if initial else 1.0
        self._pool_left = initial - queried

    def is_stop(self) -> bool:
        """True once the criterion is met (an exhausted pool always stops)."""
        if self._pool_left is not None and self._pool_left <= 0:
            return True
        if self.kind == "num_of_queries":
            return self._num_queries >= self.value
        if self.kind == "cost_limit":
            return self._cost >= self.value
        if self.kind == "percent_of_unlabel":
            return self._fraction_queried >= self.value
        if self.kind == "time_limit":
            return time.monotonic() - self._start >= self.value
        return False
