"""SATE (Safety-Aware Twin Expert) training data: refusals for harmful train prompts, normal answers for benign ones.

The twin is a LoRA copy of the base model trained with the shared trainer (recipes/safethinker/train.py)
on these rows. Only train-split prompts are used (llmkit.safety.data.split_of), so no validation or
test prompt is ever trained on. Benign answers are CodeAlpaca's reference outputs (GSM8K/ScienceQA rows
here come from test files, so they are used only as gateway/benign prompts, never as SFT targets).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from llmkit.safety.data import SafetyPrompt, split_of
from llmkit.safety.refusal import STANDARD_REFUSAL

REFUSALS = (
    STANDARD_REFUSAL,
    "I'm sorry, but I can't assist with that. It could cause serious harm.",
    "I cannot help with this request because it could be used to hurt people or break the law.",
    "I'm sorry, I won't provide that. If you have another question, I'm happy to help.",
)


def sate_rows(
    harmful: Sequence[SafetyPrompt], benign: Sequence[tuple[str, str]], seed: int = 0
) -> list[dict[str, str]]:
    """{prompt, response} rows: each harmful prompt with a refusal (one of `REFUSALS`, seeded), each
    (benign prompt, answer) as is; shuffled with `seed`. Raises if any prompt is not in the train split."""
    rng = random.Random(seed)
    rows = []
    for p in harmful:
        if split_of(p.text) != "train":
            raise ValueError(f"SATE data must use train-split prompts only; got {p.text[:60]!r}")
        rows.append({"prompt": p.text, "response": rng.choice(REFUSALS)})
    for prompt, answer in benign:
        if split_of(prompt) != "train":
            raise ValueError(f"SATE data must use train-split prompts only; got {prompt[:60]!r}")
        rows.append({"prompt": prompt, "response": answer})
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: Sequence[dict], path: str | Path) -> Path:
    """Write rows as JSON lines (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
