"""MBPP: the test split, reference solutions pass in the sandbox, wrong code fails."""

from __future__ import annotations

from llmkit.evaluation.sandbox import run_programs
from llmkit.evaluation.tasks import get_task


def test_reference_solutions_pass_and_wrong_code_fails():
    task = get_task("mbpp")
    problems = task.load()
    assert len(problems) == 500 and problems[0]["task_id"] == 11 and problems[-1]["task_id"] == 510
    programs = task.programs(problems, [[p["code"]] for p in problems], chat=False)
    results = run_programs(programs, task.limits, show_progress=False)
    failed = [p["id"] for p, r in zip(problems, results) if not r.passed]
    assert failed == []
    wrong = task.programs(problems[:10], [["def nothing():\n    pass\n"]] * 10, chat=False)
    assert not any(r.passed for r in run_programs(wrong, task.limits, show_progress=False))
    chat = task.programs(problems[:1], [["Sure:\n```python\n" + problems[0]["code"] + "\n```"]], chat=True)
    assert run_programs(chat, task.limits, show_progress=False)[0].passed
