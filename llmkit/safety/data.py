"""Prompt pools for the gateway and the safety evaluation, with fixed prompt-level splits.

Harmful: AdvBench `goal` (with its `target`, used by prefilling attacks) and HarmBench `Behavior`
(standard + copyright; contextual rows keep only the behavior text). Benign: CodeAlpaca instructions,
GSM8K test questions, ScienceQA test questions. Splits are by a hash of the normalised prompt text, so a
prompt (and any exact duplicate of it, across datasets) always lands in the same split.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from llmkit.errors import DataError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class SafetyPrompt:
    """One prompt: its text, label (1 harmful, 0 benign), source dataset and, for AdvBench, the target."""

    text: str
    label: int
    source: str
    target: str | None = None


def normalise(text: str) -> str:
    """Lower-case, whitespace-collapsed text: the key that decides a prompt's split."""
    return " ".join(text.lower().split())


def prompt_unit(text: str) -> float:
    """A number in [0, 1) fixed by the normalised prompt (first 8 bytes of its SHA-256)."""
    digest = hashlib.sha256(normalise(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(text: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """'train', 'val' or 'test' for `text`: the hash unit against the cumulative `fractions`."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    u = prompt_unit(text)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def split_prompts(
    prompts: Iterable[SafetyPrompt], fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[SafetyPrompt]]:
    """Prompts grouped by `split_of`; duplicates (same normalised text) are kept once, first wins."""
    out: dict[str, list[SafetyPrompt]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for p in prompts:
        key = normalise(p.text)
        if not key or key in seen:
            continue
        seen.add(key)
        out[split_of(p.text, fractions)].append(p)
    return out


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def load_advbench(root: Path) -> list[SafetyPrompt]:
    """AdvBench harmful behaviors (goal, target)."""
    with _need(root / "advbench/harmful_behaviors.csv").open(newline="", encoding="utf-8") as f:
        return [SafetyPrompt(r["goal"], 1, "advbench", r["target"]) for r in csv.DictReader(f)]


def load_harmbench(root: Path) -> list[SafetyPrompt]:
    """HarmBench text behaviors (the Behavior column)."""
    with _need(root / "harmbench/harmbench_behaviors_text_all.csv").open(newline="", encoding="utf-8") as f:
        return [SafetyPrompt(r["Behavior"], 1, "harmbench") for r in csv.DictReader(f)]


def load_benign(root: Path) -> list[SafetyPrompt]:
    """Benign prompts: CodeAlpaca instructions (with input appended), GSM8K and text-only ScienceQA questions."""
    out: list[SafetyPrompt] = []
    for row in json.loads(_need(root / "codealpaca/code_alpaca_2k.json").read_text(encoding="utf-8")):
        text = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
        out.append(SafetyPrompt(text, 0, "codealpaca"))
    with _need(root / "gsm8k/test.jsonl").open(encoding="utf-8") as f:
        out += [SafetyPrompt(json.loads(line)["question"], 0, "gsm8k") for line in f if line.strip()]
    with _need(root / "scienceqa/test.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row.get("image") is None and row.get("question"):
                    out.append(SafetyPrompt(row["question"], 0, "scienceqa"))
    return out


def load_all(root: str | Path | None = None) -> list[SafetyPrompt]:
    """Every harmful and benign prompt from the shared data folder (LLMKIT_DATA_DIR by default)."""
    if root is None:
        from llmkit.data.loading import data_dir

        root = data_dir()
        if root is None:
            raise DataError("no data folder: set LLMKIT_DATA_DIR")
    root = Path(root)
    return load_advbench(root) + load_harmbench(root) + load_benign(root)


def balanced(prompts: Sequence[SafetyPrompt], per_source: int, seed: int = 0) -> list[SafetyPrompt]:
    """At most `per_source` prompts of each source, picked by a seeded shuffle (order kept stable)."""
    import random

    by: dict[str, list[SafetyPrompt]] = {}
    for p in prompts:
        by.setdefault(p.source, []).append(p)
    out: list[SafetyPrompt] = []
    for source in sorted(by):
        items = list(by[source])
        random.Random(f"{seed}:{source}").shuffle(items)
        out += items[:per_source]
    return out
