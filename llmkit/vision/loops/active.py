"""ActiveLoop: train → score → select → ask the oracle → record → stop, resumable after any round.

Each round trains the target classifier (and, if the strategy asks for one, the C+1-way detector)
from scratch, as LfOSA and EAOA do, with seeds derived from (run seed, round, role). The StateIO
is saved after every round with the oracle's answers and the strategy's adaptive state, so a run
restarted from the saved file continues exactly as if it had never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmkit.vision import VisionError
from llmkit.vision.al import UNKNOWN, IndexCollection, Oracle, State, StateIO, StoppingCriteria, query_precision
from llmkit.vision.loops.common import accuracy, derived_seed, fit
from llmkit.vision.losses.evidential import CrossEntropy
from llmkit.vision.models import MLP
from llmkit.vision.strategies.base import ModelScorer, QueryResult

_TARGET, _DETECTOR, _EXTRA_ROLES = 0, 1, 3  # role keys of derived_seed


@dataclass
class ActiveConfig:
    """Training and query settings for one AL run (defaults: docs/methods/vision-active-learning.md §0)."""

    budget: int = 30
    target_steps: int = 150
    detector_steps: int = 150
    lr: float = 1e-3
    hidden: tuple = (128, 128)


class ActiveLoop:
    """Open-set (or closed-set) pool-based active learning over rows of `x`.

    x: features of every train example (initial labelled + pool), [N, D] tensor.
    oracle: answers labels 0..C-1, or UNKNOWN for open-set examples.
    x_test, y_test: known-class test set (labels 0..C-1) for the performance curve.
    stateio: holds init_L / init_U; pass a loaded StateIO to resume.
    """

    def __init__(
        self,
        x: torch.Tensor,
        oracle: Oracle,
        strategy,
        stopping: StoppingCriteria,
        stateio: StateIO,
        *,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        num_known: int,
        seed: int = 0,
        config: ActiveConfig | None = None,
        model_factory=None,
    ):
        if len(oracle) != x.shape[0]:
            raise VisionError(f"oracle knows {len(oracle)} examples but x has {x.shape[0]} rows")
        self.x, self.oracle, self.strategy, self.stopping, self.stateio = x, oracle, strategy, stopping, stateio
        self.x_test, self.y_test, self.num_known, self.seed = x_test, y_test, num_known, seed
        self.config = config or ActiveConfig()
        self.model_factory = model_factory or (lambda classes: MLP(x.shape[1], classes, self.config.hidden))
        self._check_meta()
        self._target_cache: tuple[int, torch.nn.Module] | None = None

    def _check_meta(self) -> None:
        """Refuse to resume a saved run with a different strategy, seed or budget (it would not be the same run)."""
        meta = {
            "strategy": getattr(self.strategy, "name", type(self.strategy).__name__),
            "seed": self.seed,
            "budget": self.config.budget,
            "num_known": self.num_known,
        }
        saved = self.stateio.meta
        clash = {k: (saved[k], v) for k, v in meta.items() if k in saved and saved[k] != v}
        if clash:
            raise VisionError(f"saved AL state was made with different settings (saved, now): {clash}")
        saved.update(meta)

    # -- training -------------------------------------------------------------------------------
    def _train(self, idx: np.ndarray, labels: np.ndarray, num_outputs: int, loss_fn, steps: int, seed: int):
        torch.manual_seed(seed)  # the initial weights
        model = self.model_factory(num_outputs)
        return fit(
            model,
            self.x[torch.as_tensor(idx)],
            torch.as_tensor(labels, dtype=torch.int64),
            loss_fn,
            steps=steps,
            lr=self.config.lr,
            seed=seed,
        )

    def _target(self, rounds_done: int, labelled: IndexCollection, labels: dict) -> torch.nn.Module:
        """Target classifier on the labelled known set after `rounds_done` rounds (cached: it is also the
        model evaluated at the end of the previous round)."""
        if self._target_cache is not None and self._target_cache[0] == rounds_done:
            return self._target_cache[1]
        idx = labelled.index
        model = self._train(
            idx,
            np.array([labels[i] for i in idx]),
            self.num_known,
            CrossEntropy(),
            self.config.target_steps,
            derived_seed(self.seed, rounds_done, _TARGET),
        )
        self._target_cache = (rounds_done, model)
        return model

    def _detector(self, rounds_done: int, labelled: IndexCollection, unknown: IndexCollection, labels: dict):
        """C+1-way detector: labelled known examples keep their class, queried unknowns get class C."""
        idx = np.concatenate([labelled.index, unknown.index])
        y = np.array([labels[i] for i in labelled.index] + [self.num_known] * len(unknown), dtype=np.int64)
        loss = self.strategy.detector_loss(self.num_known)
        return self._train(
            idx,
            y,
            self.num_known + 1,
            loss,
            self.config.detector_steps,
            derived_seed(self.seed, rounds_done, _DETECTOR),
        )

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> StateIO:
        """Run rounds until the stopping criterion holds; continues from the StateIO's last round."""
        workspace = self.stateio.recover_workspace()
        labelled, unlabelled, unknown = workspace.labelled, workspace.unlabelled, workspace.unknown
        strategy_state = workspace.strategy_state or self.strategy.initial_state()
        # Labels of the initial set are given (not bought); queried labels come from the saved answers.
        init_answers, _ = self.oracle.query_by_index(self.stateio.init_L.index)
        if (init_answers == UNKNOWN).any():
            raise VisionError("the initial labelled set contains examples of unknown classes")
        labels = dict(zip(self.stateio.init_L.index.tolist(), init_answers.tolist()))
        for state in self.stateio:
            labels.update({i: a for i, a in zip(state["select_index"], state["queried_label"]) if a != UNKNOWN})

        if self.stateio.initial_point is None:
            self.stateio.initial_point = accuracy(self._target(0, labelled, labels), self.x_test, self.y_test)
            if self.stateio.saving_path is not None:
                self.stateio.save()
        self.stopping.update_information(self.stateio)

        while not self.stopping.is_stop():
            rounds_done = self.stateio.num_of_query
            round_no = rounds_done + 1
            models = {}
            if "target" in self.strategy.requires:
                models["target"] = self._target(rounds_done, labelled, labels)
            if "detector" in self.strategy.requires:
                models["detector"] = self._detector(rounds_done, labelled, unknown, labels)
            budget = min(self.config.budget, len(unlabelled))
            labelled_idx = np.concatenate([labelled.index, unknown.index])
            labelled_y = np.array([labels[i] for i in labelled.index] + [UNKNOWN] * len(unknown), dtype=np.int64)
            # Roles the loop does not know how to train (e.g. BUAL's PL/NL network) use the strategy's recipe.
            for k, role in enumerate(sorted(set(self.strategy.requires) - {"target", "detector"})):
                models[role] = self.strategy.train_role(
                    role,
                    x=self.x,
                    labelled_idx=labelled_idx,
                    labelled_y=labelled_y,
                    pool_idx=unlabelled.index,
                    budget=budget,
                    hidden=self.config.hidden,
                    seed=derived_seed(self.seed, rounds_done, _EXTRA_ROLES + k),
                )
            result = self.strategy.select(
                unlabelled.index,
                budget,
                scorer=ModelScorer(self.x, models),
                labelled_idx=labelled_idx,
                labelled_y=labelled_y,
                state=strategy_state,
                rng=np.random.default_rng([self.seed, round_no]),
                return_utilities=True,
            )
            chosen = result.indices if isinstance(result, QueryResult) else np.asarray(result)
            if not set(chosen.tolist()) <= set(unlabelled):
                raise VisionError(f"strategy {self.strategy.name!r} returned indices outside the unlabelled pool")

            answers, costs = self.oracle.query_by_index(chosen)
            precision = query_precision(answers)
            strategy_state = self.strategy.update_state(strategy_state, precision)
            for idx, answer in zip(chosen.tolist(), answers.tolist()):
                (unknown if answer == UNKNOWN else labelled).add(idx)
                if answer != UNKNOWN:
                    labels[idx] = answer
            unlabelled.difference_update(chosen)

            performance = accuracy(self._target(round_no, labelled, labels), self.x_test, self.y_test)
            self.stateio.add_state(
                State(
                    chosen,
                    performance,
                    answers,
                    costs,
                    query_precision=precision,
                    num_labelled=len(labelled),
                    strategy_state=strategy_state,
                )
            )
            self.stopping.update_information(self.stateio)
        return self.stateio
