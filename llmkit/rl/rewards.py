"""Verifiable rewards (1 correct / 0 not) and the prompt sets RL recipes train on.

* `gsm8k`: the harness's numeric verifier (final '#### N', '\\boxed{N}', 'the answer is N', else the last
  number) against the record's `answer` (a GSM8K solution or a bare number).
* `boxed`: the content of the last ``\\boxed{...}`` (nested braces allowed) must equal the answer, as a
  number when both parse, else as whitespace-normalised text.
* `toy_arithmetic_prompts`: seeded two-number additions and subtractions, for the CPU check of the
  paper (small numbers keep some prompts easy and some hard for a 135M model).
"""

from __future__ import annotations

import random
from typing import Any

from llmkit.evaluation.answers import gsm8k_correct, gsm8k_gold, normalize_number

INSTRUCTION = "Solve the problem. Think step by step, then give the final answer as \\boxed{{N}}.\n\n{question}"


def _gold(answer: str) -> str:
    return gsm8k_gold(answer) if "####" in answer else (normalize_number(answer) or answer.strip())


def gsm8k_reward(completion: str, record: dict[str, Any]) -> float:
    """1.0 if the completion's final number equals the record's answer, else 0.0."""
    return float(gsm8k_correct(completion, _gold(str(record["answer"]))))


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces; None if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def boxed_reward(completion: str, record: dict[str, Any]) -> float:
    """1.0 if the last boxed answer equals the record's answer (numerically when both are numbers)."""
    got = last_boxed(completion)
    if got is None:
        return 0.0
    gold = _gold(str(record["answer"]))
    a, b = normalize_number(got), normalize_number(gold)
    if a is not None and b is not None:
        return float(a == b)
    return float(" ".join(got.split()) == " ".join(gold.split()))


REWARDS = {"gsm8k": gsm8k_reward, "boxed": boxed_reward}


def toy_arithmetic_prompts(count: int, seed: int = 0, max_operand: int = 60) -> list[dict[str, Any]]:
    """`count` prompt records {prompt (chat), answer, index}: 'a + b' or 'a - b' with operands ≤ max_operand."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-")
        value = a + b if op == "+" else a - b
        question = f"What is {a} {op} {b}?"
        out.append({"prompt": [{"role": "user", "content": INSTRUCTION.format(question=question)}],
                    "answer": str(value), "index": i, "question": question})
    return out
