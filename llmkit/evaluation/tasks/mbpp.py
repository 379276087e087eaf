"""MBPP, the standard test split (task_id 11-510), scored in the same sandbox as HumanEval."""

from __future__ import annotations

from typing import Any

from llmkit.data.loading import read_records
from llmkit.evaluation.code import extract_code
from llmkit.evaluation.tasks.humaneval import HumanEval
from llmkit.generation.types import Prompt

TEST_IDS = range(11, 511)
PROMPT = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"
)


def read_mbpp(path: str | None = None, split_ids=TEST_IDS) -> list[dict[str, Any]]:
    """MBPP rows with task_id in `split_ids` (default: the test split), from `path` or LLMKIT_DATA_DIR."""
    rows = read_records(path or "mbpp/mbpp.jsonl", split="test")
    wanted = set(split_ids)
    problems = [r for r in rows if r["task_id"] in wanted]
    for r in problems:
        r["id"] = f"MBPP/{r['task_id']}"
    return sorted(problems, key=lambda r: r["task_id"])


def mbpp_program(problem: dict[str, Any], completion: str, chat: bool) -> str:
    """The model's code + the setup code (it may use the solution's classes, e.g. task 367) + the asserts:
    code + "\\n\\n" + (test_setup_code or "") + "\\n" + the asserts, one per line, + "\\n"."""
    code = extract_code(completion) if chat else completion
    tests = "\n".join(problem["test_list"])
    return f"{code}\n\n{problem.get('test_setup_code') or ''}\n{tests}\n"


class MBPP(HumanEval):
    """Zero-shot MBPP: the task text and its tests as the prompt (chat: answer in a code block)."""

    name = "mbpp"
    default_stop = ["\n```", "\nif __name__", "\n# Test", "\nassert "]

    def load(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The 500 test problems in task-id order, optionally the first `limit`."""
        return read_mbpp(self.data_path)[:limit]

    def prompt(self, problem: dict[str, Any], chat: bool) -> Prompt:
        """The task text with its tests; completion mode opens a code block for the model to fill."""
        text = PROMPT.format(text=problem["text"], tests="\n".join(problem["test_list"]))
        if chat:
            return [{"role": "user", "content": text + "\nAnswer with the code in one ```python code block."}]
        return text + "\n```python\n"

    def executed(self, problem: dict[str, Any], answer: str, chat: bool) -> tuple[str, str]:
        """(completion, program): the code taken from the answer, and the program run, which is that code
        followed by the problem's setup code and asserts (see `mbpp_program`)."""
        completion = extract_code(answer) if chat else answer
        return completion, mbpp_program(problem, completion, chat=False)
