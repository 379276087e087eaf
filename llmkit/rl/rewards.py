"""Verifiable rewards (1 correct / 0 not) and the prompt sets RL recipes train on.

* `gsm8k`: the harness's numeric verifier (final '#### N', '\\boxed{N}', 'the answer is N', else the last
  number) against the record's `answer` (a GSM8K solution or a bare number).
* `boxed`: the content of the last ``\\boxed{...}`` (nested braces allowed) must equal the answer, as a
  number when both parse, else as whitespace-normalised text.
* `code_tests`: the completion's code is run against its problem's tests in the harness sandbox (the
  harness's code extraction, pass rule and limits), all completions of a rollout in parallel, in a program
  built so the completion cannot make a test pass without solving it (`llmkit.rl.code_reward`): 1 if every
  test passes, else 0. `code_tests_fraction`: the fraction of the asserts that pass (each its own run).
* `toy_arithmetic_prompts`: seeded two-number additions and subtractions, for the CPU check of the
  paper (small numbers keep some prompts easy and some hard for a 135M model).
* `mbpp_prompts`: MBPP problems as RL prompt records (by default the ids outside the test split 11–510).
"""

from __future__ import annotations

import random
from typing import Any

from llmkit.evaluation.answers import gsm8k_correct, gsm8k_gold, normalize_number
from llmkit.rl.code_reward import CodeTestsReward, top_level_names

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


def score_completions(reward_fn, texts: list[str], records: list[dict[str, Any]]) -> list[float]:
    """Rewards of (completion, record) pairs: one batched call when the reward has `score_batch` (code execution
    runs a whole rollout in parallel), else one call per completion."""
    batched = getattr(reward_fn, "score_batch", None)
    if batched is not None:
        return [float(x) for x in batched(texts, records)]
    return [float(reward_fn(t, r)) for t, r in zip(texts, records)]


REWARDS = {
    "gsm8k": gsm8k_reward,
    "boxed": boxed_reward,
    "code_tests": CodeTestsReward(),
    "code_tests_fraction": CodeTestsReward(fraction=True),
}

# MBPP ids outside the standard test split (11–510): the prompt split (1–10) and the train/validation ids.
MBPP_TRAIN_IDS = tuple(range(601, 975)) + tuple(range(1, 11))


def mbpp_prompts(path: str | None = None, task_ids=MBPP_TRAIN_IDS, shown_tests: int = 1) -> list[dict[str, Any]]:
    """MBPP problems as RL prompt records: the harness's chat prompt showing the first `shown_tests` asserts
    (the function's name and call shape), and the *other* asserts as the reward's `test_list`, so a completion
    cannot pass by copying answers from its prompt; `index` = position. Problems with no assert left to score
    are dropped. Raises if any requested id is in the evaluation split 11–510.
    """
    from llmkit.evaluation.tasks.mbpp import MBPP, TEST_IDS, read_mbpp

    leaked = sorted(set(task_ids) & set(TEST_IDS))
    if leaked:
        raise ValueError(f"MBPP ids {leaked[:5]}... are in the evaluation split 11-510")
    if shown_tests < 0:
        raise ValueError(f"shown_tests must be >= 0, got {shown_tests}")
    task = MBPP()
    order = {t: k for k, t in enumerate(task_ids)}
    problems = sorted(read_mbpp(path, split_ids=task_ids), key=lambda p: order[p["task_id"]])
    records = []
    for p in problems:
        shown = p["test_list"][:shown_tests]
        scored = [t for t in p["test_list"][shown_tests:] if t not in shown]  # MBPP repeats an assert at times
        if not scored:
            continue
        records.append(
            {
                "prompt": task.prompt({**p, "test_list": shown}, chat=True),
                "index": len(records),
                "task_id": p["task_id"],
                "test_list": scored,
                "shown_tests": shown,
                "test_setup_code": p.get("test_setup_code") or "",
                "solution_names": top_level_names(p["code"]),
            }
        )
    return records


def toy_arithmetic_prompts(count: int, seed: int = 0, max_operand: int = 60) -> list[dict[str, Any]]:
    """`count` prompt records {prompt (chat), answer, index}: 'a + b' or 'a - b' with operands ≤ max_operand."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-")
        value = a + b if op == "+" else a - b
        question = f"What is {a} {op} {b}?"
        out.append(
            {
                "prompt": [{"role": "user", "content": INSTRUCTION.format(question=question)}],
                "answer": str(value),
                "index": i,
                "question": question,
            }
        )
    return out
