"""The `code_tests` RL reward: MBPP prompts outside the test split, scored in the harness sandbox."""

from __future__ import annotations

import pytest

from llmkit.evaluation.tasks.mbpp import TEST_IDS, read_mbpp
from llmkit.rl.rewards import MBPP_TRAIN_IDS, REWARDS, CodeTestsReward, mbpp_prompts


def fenced(code: str) -> str:
    return f"Here is the solution.\n```python\n{code}\n```"


@pytest.fixture(scope="module")
def records():
    prompts = mbpp_prompts()
    return {r["task_id"]: r for r in prompts}


def test_mbpp_prompts_never_touch_the_evaluation_split(records):
    assert len(records) == 384 and set(records) == set(MBPP_TRAIN_IDS)
    assert not set(records) & set(TEST_IDS)
    assert sorted(r["index"] for r in records.values()) == list(range(384))
    with pytest.raises(ValueError, match="evaluation split"):
        mbpp_prompts(task_ids=[601, 11])


def test_reference_solutions_pass_and_wrong_ones_fail_in_one_parallel_batch(records):
    reward = REWARDS["code_tests"]
    solutions = {r["task_id"]: r["code"] for r in read_mbpp(split_ids=MBPP_TRAIN_IDS)}
    ids = [602, 605, 1, 2]
    good = [fenced(solutions[i]) for i in ids]
    bad = [fenced("def nothing():\n    return None")] * len(ids)
    scores = reward.score_batch(good + bad, [records[i] for i in ids] * 2)
    assert scores == [1.0] * 4 + [0.0] * 4


def test_fraction_counts_asserts_and_is_one_only_when_all_pass(records):
    record = {"test_list": ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 7"], "test_setup_code": "", "index": 0}
    doubles = fenced("def f(x):\n    return 2 * x")
    assert REWARDS["code_tests_fraction"](doubles, record) == pytest.approx(2 / 3)
    assert REWARDS["code_tests"](doubles, record) == 0.0
    assert CodeTestsReward(fraction=True)(fenced("def f(x):\n    return {1: 2, 2: 4, 3: 7}[x]"), record) == 1.0


@pytest.mark.parametrize("attack", [
    "import sys\nsys.exit(0)",                                    # leave before the asserts
    "import os\nos._exit(0)",
    "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\ndef f(x):\n    return 0",
    "def f(x):\n    return 0\nraise SystemExit(0)",
    "while True:\n    pass",                                       # time out
])
def test_hostile_completions_earn_nothing(attack):
    record = {"test_list": ["assert f(1) == 2"], "test_setup_code": "", "index": 0}
    assert CodeTestsReward(timeout_s=3.0)(fenced(attack), record) == 0.0


def test_empty_tests_are_refused():
    with pytest.raises(ValueError, match="test_list"):
        REWARDS["code_tests"](fenced("x = 1"), {"test_list": [], "index": 3})
