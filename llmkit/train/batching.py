"""Deterministic batching: which examples form each optimizer step, and which of them each process takes.

The order is a pure function of (seed, epoch), so resuming needs only the step number, and the set of
examples in an optimizer step does not depend on how many processes or micro-batches share it: the
same global batch gives the same loss on 1 process with accumulation as on N processes.
"""

from __future__ import annotations

import torch


def epoch_permutation(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The example order for `epoch` (a seeded permutation, or 0..n-1 when `shuffle` is False)."""
    if not shuffle:
        return list(range(num_examples))
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Optimizer steps in one epoch; the last incomplete global batch is dropped (and reported)."""
    return num_examples // global_batch


def step_indices(num_examples: int, global_batch: int, seed: int, step: int, shuffle: bool = True) -> list[int]:
    """Indices of the examples in global optimizer step `step` (0-based, counted across epochs)."""
    per_epoch = steps_per_epoch(num_examples, global_batch)
    if per_epoch == 0:
        raise ValueError(f"global batch {global_batch} is larger than the dataset ({num_examples} examples)")
    epoch, within = divmod(step, per_epoch)
    order = epoch_permutation(num_examples, seed, epoch, shuffle)
    return order[within * global_batch : (within + 1) * global_batch]


def process_micro_batches(
    indices: list[int], world_size: int, rank: int, per_device_batch_size: int, accumulation_steps: int
) -> list[list[int]]:
    """Split one step's global batch into this process's `accumulation_steps` micro-batches.

    Micro-batch a of process r holds chunk (a * world_size + r) of the global batch.
    """
    expected = world_size * per_device_batch_size * accumulation_steps
    if len(indices) != expected:
        raise ValueError(f"step has {len(indices)} examples, expected {expected}")
    out = []
    for a in range(accumulation_steps):
        chunk = a * world_size + rank
        out.append(indices[chunk * per_device_batch_size : (chunk + 1) * per_device_batch_size])
    return out
