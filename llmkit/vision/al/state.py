"""State and StateIO: one record per query round, saved after every round so a run can resume.

Modelled on ALiPy's State/StateIO but stored as JSON (readable, diffable, no pickle). A state holds
the queried indices, the oracle's answers and costs, the performance after retraining, and any
extra keys (query precision, a strategy's adaptive knobs) — everything a resumed run needs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.io import atomic_write_json
from llmkit.vision import VisionError
from llmkit.vision.al.index import IndexCollection
from llmkit.vision.al.oracle import UNKNOWN

_FORMAT_VERSION = 1


def _jsonable(value):
    """numpy scalars/arrays → plain Python, recursively (JSON cannot store numpy types)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class State(dict):
    """One query round: `select_index`, `performance`, optional `queried_label`, `cost`, plus any extra keys."""

    def __init__(self, select_index, performance, queried_label=None, cost=None, **extra):
        select_index = [int(i) for i in np.asarray(select_index).reshape(-1)]
        super().__init__(select_index=select_index, performance=performance, **extra)
        if queried_label is not None:
            labels = [int(v) for v in np.asarray(queried_label).reshape(-1)]
            if len(labels) != len(select_index):
                raise VisionError(f"{len(labels)} labels for {len(select_index)} queried indices")
            self["queried_label"] = labels
        if cost is not None:
            self["cost"] = [float(c) for c in np.asarray(cost).reshape(-1)]


@dataclass
class Workspace:
    """The AL sets after some number of rounds, rebuilt from the saved states.

    labelled: initial labelled + every queried known example; unknown: every example the oracle
    answered UNKNOWN; unlabelled: the initial pool minus everything queried; strategy_state: the
    strategy's adaptive knobs as saved in the last state (empty before the first round).
    """

    labelled: IndexCollection
    unlabelled: IndexCollection
    unknown: IndexCollection
    strategy_state: dict


class StateIO:
    """Append-only list of `State`s for one AL run (fold/seed `round`), saved to `saving_path` after each add.

    `StateIO.load(path)` restores it; `recover_workspace(i)` rebuilds the labelled/unlabelled/unknown
    sets after i rounds, which is how an interrupted run resumes exactly where it stopped.
    """

    def __init__(
        self,
        round: int,
        train_idx,
        test_idx,
        init_L,
        init_U,
        initial_point=None,
        saving_path: str | os.PathLike | None = None,
        meta: dict | None = None,
        verbose: bool = False,
    ):
        self.round = int(round)
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.test_idx = np.asarray(test_idx, dtype=np.int64)
        self.init_L = IndexCollection(init_L)
        self.init_U = IndexCollection(init_U)
        overlap = set(self.init_L) & set(self.init_U)
        if overlap:
            raise VisionError(f"initial labelled and unlabelled sets overlap on {len(overlap)} indices")
        self.initial_point = initial_point
        self.saving_path = None if saving_path is None else Path(saving_path)
        self.meta = dict(meta or {})
        self.verbose = verbose
        self._states: list[State] = []

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self):
        return iter(self._states)

    def __getitem__(self, i: int) -> State:
        return self._states[i]

    @property
    def num_of_query(self) -> int:
        """Number of query rounds recorded."""
        return len(self._states)

    @property
    def cost_inall(self) -> float:
        """Total oracle cost so far (a round without a `cost` key costs one per queried index)."""
        return float(sum(sum(s.get("cost", [1.0] * len(s["select_index"]))) for s in self._states))

    def add_state(self, state: State) -> None:
        """Append a round's state and save (if a path is set), checking its indices were still unlabelled."""
        if not isinstance(state, State):
            raise VisionError(f"add_state expects a State, got {type(state).__name__}")
        queried_before = {i for s in self._states for i in s["select_index"]}
        bad = [i for i in state["select_index"] if i not in self.init_U or i in queried_before]
        if bad:
            raise VisionError(f"state queries indices that are not in the unlabelled pool: {bad[:5]}")
        self._states.append(state)
        if self.verbose:
            print(f"[round {self.round}] query {self.num_of_query}: performance {state['performance']}")
        if self.saving_path is not None:
            self.save()

    def get_current_performance(self):
        """Performance after the latest round (the initial point before any round)."""
        return self._states[-1]["performance"] if self._states else self.initial_point

    def to_dict(self) -> dict:
        """Everything needed to rebuild this StateIO, as JSON-ready Python."""
        return _jsonable(
            {
                "format_version": _FORMAT_VERSION,
                "round": self.round,
                "train_idx": self.train_idx,
                "test_idx": self.test_idx,
                "init_L": self.init_L.index,
                "init_U": self.init_U.index,
                "initial_point": self.initial_point,
                "meta": self.meta,
                "states": list(self._states),
            }
        )

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write JSON atomically (temp file + rename) so a crash mid-write never leaves a torn file."""
        path = Path(path) if path is not None else self.saving_path
        if path is None:
            raise VisionError("StateIO.save needs a path (none given and no saving_path set)")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict(), indent=None)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, saving_path: str | os.PathLike | None = "same") -> "StateIO":
        """Read a saved StateIO; by default it keeps saving to the same file."""
        path = Path(path)
        if not path.is_file():
            raise VisionError(f"no saved AL state at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise VisionError(f"{path} is not a valid StateIO file: {exc}") from None
        if data.get("format_version") != _FORMAT_VERSION:
            raise VisionError(f"{path}: unsupported StateIO format {data.get('format_version')!r}")
        stateio = cls(
            data["round"],
            data["train_idx"],
            data["test_idx"],
            data["init_L"],
            data["init_U"],
            data["initial_point"],
            saving_path=path if saving_path == "same" else saving_path,
            meta=data["meta"],
        )
        for raw in data["states"]:
            raw = dict(raw)
            stateio._states.append(State(raw.pop("select_index"), raw.pop("performance"), **raw))
        return stateio

    def recover_workspace(self, iteration: int | None = None) -> Workspace:
        """Labelled / unlabelled / unknown sets after `iteration` rounds (default: all recorded)."""
        iteration = self.num_of_query if iteration is None else iteration
        if not 0 <= iteration <= self.num_of_query:
            raise VisionError(f"iteration must be in [0, {self.num_of_query}], got {iteration}")
        labelled, unlabelled, unknown = self.init_L.copy(), self.init_U.copy(), IndexCollection()
        strategy_state: dict = {}
        for state in self._states[:iteration]:
            answers = state.get("queried_label", [0] * len(state["select_index"]))
            for idx, answer in zip(state["select_index"], answers):
                (unknown if answer == UNKNOWN else labelled).add(idx)
            unlabelled.difference_update(state["select_index"])
            strategy_state = dict(state.get("strategy_state", {}))
        return Workspace(labelled, unlabelled, unknown, strategy_state)

    def truncate(self, iteration: int) -> None:
        """Drop states after `iteration` (e.g. to re-run from an earlier round)."""
        self._states = self._states[:iteration]
