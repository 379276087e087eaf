"""What the hidden-state probe reads: its prompt tokens and the mean-pooled hidden state.

Both the gateway (scoring) and `probe_training` (training the head) use these, so they live below both:
the gateway can then import the trainer at module level without an import circle.
"""

from __future__ import annotations

from typing import Sequence

import torch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (b, t, d) over positions where `attention_mask` (b, t) is 1."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def encode_probe_prompts(tokenizer, texts: Sequence[str], max_length: int = 256) -> list[list[int]]:
    """Token ids of each text as the probe sees it: one user turn through the chat template (with the
    assistant header), no extra special tokens, truncated to `max_length`. Scoring and training share it."""
    from llmkit.generation.hf import render_prompt

    rendered = [render_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    return [
        list(ids)
        for ids in tokenizer(rendered, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    ]
