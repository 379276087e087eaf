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


def test_verdicts_keep_the_program_run_and_the_code_taken_from_the_answer():
    from llmkit.generation.types import Completion, GenerationOutput

    task = get_task("mbpp")
    problems = task.load(limit=2)
    answers = ["Sure:\n```python\n" + problems[0]["code"] + "\n```\nDone.", "```python\ndef nothing():\n    pass\n```"]
    outputs = [GenerationOutput("", [Completion(a, [], "stop")]) for a in answers]
    verdicts = [row[0] for row in task.score(problems, outputs, chat=True, ks=[1]).verdicts]
    assert [v["passed"] for v in verdicts] == [True, False]
    for problem, v in zip(problems, verdicts):
        # the documented relation (mbpp_program): code + setup + the asserts
        tests = "\n".join(problem["test_list"])
        assert v["program"] == f"{v['completion']}\n\n{problem.get('test_setup_code') or ''}\n{tests}\n"
    assert verdicts[0]["completion"] == problems[0]["code"] + "\n"
