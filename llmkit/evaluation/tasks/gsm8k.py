"""GSM8K (test split, 1,319 problems): numeric answer extraction and exact match."""

from __future__ import annotations

from typing import Any

from llmkit.data.loading import read_records
from llmkit.evaluation.answers import extract_final_number, gsm8k_correct, gsm8k_gold
from llmkit.evaluation.harness import Scored, Task
from llmkit.evaluation.metrics import mean_pass_at_k
from llmkit.generation.types import GenerationOutput, Prompt

CHAT_SUFFIX = "\n\nSolve the problem step by step, then give the final answer as 'The answer is N'."


class GSM8K(Task):
    """Zero-shot GSM8K: accuracy = exact match of the final number (pass@k over samples when n > 1)."""

    name = "gsm8k"
    default_stop = ["\n\nQuestion:", "\n\n\n"]

    def __init__(self, data_path: str | None = None, timeout_s: float = 10.0):
        self.data_path = data_path

    def load(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The test problems with their gold numbers, in file order."""
        problems = read_records(self.data_path or "gsm8k/test.jsonl", split="test", max_rows=limit)
        for i, row in enumerate(problems):
            row["id"] = f"GSM8K/{i}"
            row["gold"] = gsm8k_gold(row["answer"])
        return problems

    def prompt(self, problem: dict[str, Any], chat: bool) -> Prompt:
        """The question (chat: with an instruction on the answer format)."""
        if chat:
            return [{"role": "user", "content": problem["question"] + CHAT_SUFFIX}]
        return f"Question: {problem['question']}\nAnswer:"

    def score(self, problems, outputs: list[GenerationOutput], chat: bool, ks: list[int]) -> Scored:
        """Exact match per sample; accuracy = mean over problems of the first sample; pass@k over samples."""
        verdicts = [
            [
                {
                    "correct": gsm8k_correct(c.text, p["gold"]),
                    "predicted": extract_final_number(c.text),
                    "gold": p["gold"],
                }
                for c in o.completions
            ]
            for p, o in zip(problems, outputs)
        ]
        metrics = {"accuracy": sum(v[0]["correct"] for v in verdicts) / len(verdicts)}
        metrics.update(mean_pass_at_k([[s["correct"] for s in v] for v in verdicts], ks))
        return Scored(metrics=metrics, verdicts=verdicts)
