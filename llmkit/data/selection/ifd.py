"""Instruction-Following Difficulty: IFD(a|q) = PPL(a | q) / PPL(a), scored by the model to be tuned.

As in CodeACT's code (docs/methods/code_selection.md §1a): the conditioned text is ``"Question:\\n{q}\\n\\nAnswer:\\n"``
followed by the response, with the loss on the response tokens only; the unconditioned text is the
response alone, tokenised with the tokenizer's default special tokens, loss on all of it. PPL =
exp(mean token NLL), so IFD = exp(NLL(a|q) − NLL(a)). A pair that cannot be scored (no response token
left after truncation, a non-finite loss) gets IFD = 0 and is counted.

Scoring writes one JSON line per sample as soon as its batch is done, keyed by a hash of the pair's
text, so a long run resumes where it stopped and any pool that shares pairs with an earlier one (a
subset, a held-out split) reuses their scores; batches are formed from length-sorted sequences so
little compute goes to padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.data.padding import pad_right
from llmkit.data.sft import IGNORE_INDEX

logger = logging.getLogger(__name__)
IFD_PROMPT = "Question:\n{instruction}\n\nAnswer:\n"


def sequence_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean next-token NLL over target positions (labels != -100); NaN for a row with none.

    `logits[:, t]` predicts `labels[:, t + 1]`.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.clamp(min=0).reshape(-1), reduction="none"
    ).view_as(shift_labels)
    counts = mask.sum(dim=1)
    sums = (nll * mask).sum(dim=1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


def ifd_from_nll(conditioned_nll: np.ndarray, unconditioned_nll: np.ndarray) -> tuple[np.ndarray, int]:
    """IFD = PPL(a|q)/PPL(a) = exp(NLL(a|q) − NLL(a)); non-finite results become 0. Returns (ifd, failures)."""
    with np.errstate(over="ignore", invalid="ignore"):
        ifd = np.exp(np.asarray(conditioned_nll, dtype=np.float64) - np.asarray(unconditioned_nll, dtype=np.float64))
    bad = ~np.isfinite(ifd)
    ifd[bad] = 0.0
    return ifd, int(bad.sum())


@dataclass
class IFDInputs:
    """Token ids and labels of the two sequences IFD compares, for one (instruction, response) pair."""

    conditioned_ids: list[int]
    conditioned_labels: list[int]
    response_ids: list[int]


def build_ifd_inputs(
    tokenizer, instruction: str, response: str, max_length: int, prompt_format: str = IFD_PROMPT
) -> IFDInputs:
    """The conditioned sequence (prompt masked, truncated to `max_length`) and the response alone."""
    prompt_ids = tokenizer(prompt_format.format(instruction=instruction), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    alone = tokenizer(response, add_special_tokens=True)["input_ids"][:max_length]
    return IFDInputs(ids, labels, alone)


def pair_key(instruction: str, response: str) -> str:
    """Stable key of one (instruction, response) pair in a scores file."""
    return hashlib.sha1(f"{instruction}\x00{response}".encode()).hexdigest()


@torch.no_grad()
def _batch_nll(model, sequences: list[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    device = next(model.parameters()).device
    batch = {
        k: v.to(device)
        for k, v in pad_right([i for i, _ in sequences], pad_id, [label for _, label in sequences]).items()
    }
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return sequence_mean_nll(logits, batch["labels"]).cpu().tolist()


def score_ifd(
    model,
    tokenizer,
    instructions: Sequence[str],
    responses: Sequence[str],
    scores_path: str | os.PathLike,
    max_length: int = 2048,
    batch_size: int = 8,
    prompt_format: str = IFD_PROMPT,
    show_progress: bool = True,
) -> tuple[np.ndarray, int]:
    """IFD of every pair, reusing scores in `scores_path` (JSON lines ``{key, cond_nll, uncond_nll}``).

    The file must belong to one model, max_length and prompt format (the caller names it so).
    Returns (ifd array in pool order, number of failures mapped to 0).
    """
    from tqdm.auto import tqdm

    path = Path(scores_path)
    keys = [pair_key(q, a) for q, a in zip(instructions, responses)]
    done: dict[str, tuple[float, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[str(row["key"])] = (float(row["cond_nll"]), float(row["uncond_nll"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a crash: that sample is scored again
        logger.info("IFD: %d of %d samples already scored in %s", sum(k in done for k in keys), len(keys), path)
    todo = sorted({keys[i]: i for i in range(len(keys)) if keys[i] not in done}.values())
    inputs = {i: build_ifd_inputs(tokenizer, instructions[i], responses[i], max_length, prompt_format) for i in todo}
    todo.sort(key=lambda i: len(inputs[i].conditioned_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    with path.open("a") as fh:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            fh.write("\n")  # end a line torn by a crash, or the next score would be glued to it
        for start in tqdm(range(0, len(todo), batch_size), desc="IFD", disable=not show_progress):
            batch = todo[start : start + batch_size]
            cond = _batch_nll(model, [(inputs[i].conditioned_ids, inputs[i].conditioned_labels) for i in batch], pad)
            # the response alone: the loss covers all of its tokens
            uncond = _batch_nll(model, [(inputs[i].response_ids, inputs[i].response_ids) for i in batch], pad)
            for i, c, u in zip(batch, cond, uncond):
                done[keys[i]] = (c, u)
                fh.write(json.dumps({"key": keys[i], "cond_nll": c, "uncond_nll": u}) + "\n")
            fh.flush()
    model.train(was_training)
    cond_all = np.array([done[k][0] for k in keys])
    uncond_all = np.array([done[k][1] for k in keys])
    return ifd_from_nll(cond_all, uncond_all)
