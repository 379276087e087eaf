"""Right-padding of token sequences into batch tensors: the one implementation every collator uses."""

from __future__ import annotations

from typing import Sequence

import torch

from llmkit.data.sft import IGNORE_INDEX


def pad_right(
    ids: Sequence[Sequence[int]], pad_token_id: int, labels: Sequence[Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad token rows to the longest one.

    Returns `input_ids` (pad_token_id after each row), `attention_mask` (1 on a row's tokens, 0 on padding)
    and, when `labels` is given, `labels` (IGNORE_INDEX after each label row; a label row may be shorter than
    its token row, e.g. empty for rows with no target). All tensors are int64 of shape (rows, longest row).
    """
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        out["labels"] = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        for r, row in enumerate(labels):
            out["labels"][r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
