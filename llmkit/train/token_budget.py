"""Token-budget batches: examples packed across the whole dataset, so each optimizer step carries a steady
number of tokens (`TrainerConfig.max_tokens_per_step`).

Ordinary batches take a fixed number of examples per step, so a step's token count swings with the
example lengths, and packing can only fill rows with the few examples of one micro-batch. With a token
budget, each epoch is planned at once:

1. the examples are put in the epoch's seeded order (`llmkit.train.batching.epoch_permutation`);
2. `best_fit_decreasing` packs them into rows of at most `row_capacity` tokens (`packing_max_length`);
3. the rows are shuffled with a seeded permutation, so rows of long and of short examples mix across steps;
4. `group_rows_into_steps` cuts the row sequence into optimizer steps of at most `step_budget` tokens;
5. `process_rows` deals a step's rows to the processes: one row is one micro-batch, and a process with
   fewer rows than the others is given empty rows (`None`), so every process runs the same number of
   backward passes (DDP all-reduces the gradients on the last one).

Every epoch covers every example exactly once (nothing is dropped), and the plan is a pure function of
(lengths, seed, epoch, row capacity, step budget): resuming needs only the step number, and the steps do
not depend on the number of processes. The trainer normalises each step's loss by the step's target
tokens over all micro-batches and processes, so the split into rows and processes changes no gradient.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

from llmkit.train.batching import epoch_permutation


def best_fit_decreasing(lengths: Sequence[int], capacity: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Pack item indices into rows of at most `capacity` tokens by best-fit decreasing.

    Items are taken longest first (ties in `order`, default 0..n-1, which is how the epoch's shuffle
    enters); each goes into the open row whose free space fits it most tightly (ties: the row opened
    first), or opens a new row. Rows are returned in the order they were opened, items in the order they
    were placed. Best fit leaves the least space unused of the simple online rules, and sorting first
    keeps large items from being stranded at the end.

    >>> best_fit_decreasing([3, 7, 5, 2, 4], 10)
    [[1, 0], [2, 4], [3]]
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    order = list(range(len(lengths))) if order is None else list(order)
    too_long = [i for i in order if lengths[i] > capacity]
    if too_long:
        raise ValueError(f"item {too_long[0]} has {lengths[too_long[0]]} tokens, more than the row capacity {capacity}")
    # Python's sort is stable: equal lengths keep their place in `order`.
    by_length = sorted(order, key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    # Open rows as (free space, row number), kept sorted: the first entry with free space >= the item's
    # length is the tightest fit, found by bisection instead of a scan over every row.
    free: list[tuple[int, int]] = []
    for i in by_length:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            space, row = capacity - lengths[i], len(rows) - 1
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            space -= lengths[i]
        if space > 0:  # a full row can take nothing more: keep the search list short
            bisect.insort(free, (space, row))
    return rows


def group_rows_into_steps(row_tokens: Sequence[int], step_budget: int) -> list[list[int]]:
    """Cut a sequence of rows into consecutive optimizer steps of at most `step_budget` tokens.

    Rows are added to the current step while they fit; a row that does not fit starts the next step
    (each row is at most one step's budget: the trainer requires packing_max_length <= max_tokens_per_step).

    >>> group_rows_into_steps([6, 4, 5, 5, 3], 10)
    [[0, 1], [2, 3], [4]]
    """
    if step_budget < 1:
        raise ValueError(f"step_budget must be >= 1, got {step_budget}")
    steps: list[list[int]] = []
    used = 0
    for r, tokens in enumerate(row_tokens):
        if tokens > step_budget:
            raise ValueError(f"row {r} has {tokens} tokens, more than the step budget {step_budget}")
        if steps and used + tokens <= step_budget:
            steps[-1].append(r)
            used += tokens
        else:
            steps.append([r])
            used = tokens
    return steps


def row_permutation(num_rows: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The seeded order of an epoch's packed rows (a stream of its own, apart from the example order)."""
    if not shuffle:
        return list(range(num_rows))
    generator = torch.Generator().manual_seed((seed * 100_003 + epoch) * 2 + 1)
    return torch.randperm(num_rows, generator=generator).tolist()


def epoch_plan(
    lengths: Sequence[int], seed: int, epoch: int, row_capacity: int, step_budget: int, shuffle: bool = True
) -> list[list[list[int]]]:
    """The optimizer steps of `epoch`: each step a list of rows, each row a list of example indices.

    `lengths` are the example lengths as they will be trained (already truncated to `row_capacity`).
    Every example appears in exactly one row of the epoch.
    """
    order = epoch_permutation(len(lengths), seed, epoch, shuffle)
    rows = best_fit_decreasing(lengths, row_capacity, order)
    rows = [rows[r] for r in row_permutation(len(rows), seed, epoch, shuffle)]
    steps = group_rows_into_steps([sum(lengths[i] for i in row) for row in rows], step_budget)
    return [[rows[r] for r in step] for step in steps]


def process_rows(
    rows: Sequence[list[int]], lengths: Sequence[int], world_size: int, rank: int
) -> list[list[int] | None]:
    """This process's rows of one step; `None` stands for an empty row.

    Every process gets ceil(rows / world_size) entries. Rows are dealt round-robin in order of decreasing
    tokens (ties: step order), which keeps the processes' token counts close; the processes that run out
    first are topped up with `None`, which the trainer turns into a row with no loss tokens, so all
    processes run the same number of forward and backward passes.

    >>> process_rows([[0], [1, 2], [3]], [5, 2, 2, 1], world_size=2, rank=1)
    [[1, 2], None]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    tokens = [sum(lengths[i] for i in row) for row in rows]
    by_tokens = sorted(range(len(rows)), key=lambda r: -tokens[r])
    mine: list[list[int] | None] = [list(rows[r]) for r in by_tokens[rank::world_size]]
    per_process = -(-len(rows) // world_size)
    return mine + [None] * (per_process - len(mine))


class TokenBudgetSchedule:
    """The token-budget plan of every epoch, computed when first needed.

    A thin cache over `epoch_plan`: it keeps the step count of each epoch seen so far and the plan of the
    last epoch asked for, so locating step `s` costs one plan per epoch before it, once.
    """

    def __init__(self, lengths: Sequence[int], seed: int, row_capacity: int, step_budget: int, shuffle: bool = True):
        if not lengths:
            raise ValueError("a token-budget schedule needs at least one example")
        self.lengths = list(lengths)
        self.seed, self.row_capacity, self.step_budget, self.shuffle = seed, row_capacity, step_budget, shuffle
        self._counts: list[int] = []
        self._cached: tuple[int, list[list[list[int]]]] | None = None

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """Steps → rows → example indices of `epoch` (see `epoch_plan`)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (
                epoch,
                epoch_plan(self.lengths, self.seed, epoch, self.row_capacity, self.step_budget, self.shuffle),
            )
        return self._cached[1]

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps of `epoch` (it may differ slightly between epochs: the row order changes the cuts)."""
        while len(self._counts) <= epoch:
            self._counts.append(len(self.plan(len(self._counts))))
        return self._counts[epoch]

    def total_steps(self, num_epochs: int) -> int:
        """Optimizer steps of the first `num_epochs` epochs."""
        return sum(self.steps_in_epoch(e) for e in range(num_epochs))

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within that epoch) of global optimizer step `step` (0-based, counted across epochs)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch = 0
        while step >= self.steps_in_epoch(epoch):
            step -= self.steps_in_epoch(epoch)
            epoch += 1
        return epoch, step

    def step_rows(self, step: int) -> list[list[int]]:
        """The rows (lists of example indices) of global optimizer step `step`."""
        epoch, within = self.locate(step)
        return self.plan(epoch)[within]

    def epochs_done(self, steps: int) -> float:
        """How many epochs `steps` finished optimizer steps make, as a fraction (for the logs)."""
        if steps <= 0:
            return 0.0
        epoch, within = self.locate(steps - 1)
        return epoch + (within + 1) / self.steps_in_epoch(epoch)
