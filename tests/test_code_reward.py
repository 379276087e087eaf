"""The `code_tests` RL reward: MBPP prompts outside the test split, scored in the harness sandbox."""

from __future__ import annotations

import dis

import pytest

from llmkit.evaluation.sandbox import ExecResult
from llmkit.evaluation.tasks.mbpp import TEST_IDS, read_mbpp
from llmkit.rl.code_reward import _CHECKER, REPORT_MARKER, build_check_plan, judge, top_level_names
from llmkit.rl.rewards import MBPP_TRAIN_IDS, REWARDS, CodeTestsReward, mbpp_prompts


def fenced(code: str) -> str:
    return f"Here is the solution.\n```python\n{code}\n```"


@pytest.fixture(scope="module")
def records():
    prompts = mbpp_prompts()
    return {r["task_id"]: r for r in prompts}


def test_mbpp_prompts_never_touch_the_evaluation_split_nor_show_the_scored_asserts(records):
    assert len(records) == 384 and set(records) == set(MBPP_TRAIN_IDS)
    assert not set(records) & set(TEST_IDS)
    assert sorted(r["index"] for r in records.values()) == list(range(384))
    for r in records.values():
        text = r["prompt"][0]["content"]
        assert r["shown_tests"][0] in text and len(r["shown_tests"]) == 1
        assert r["test_list"] and not any(t in text for t in r["test_list"])
    with pytest.raises(ValueError, match="evaluation split"):
        mbpp_prompts(task_ids=[601, 11])


def test_reference_solutions_pass_and_wrong_ones_fail_in_one_parallel_batch(records):
    reward = REWARDS["code_tests"]
    solutions = {r["task_id"]: r["code"] for r in read_mbpp(split_ids=MBPP_TRAIN_IDS)}
    ids = [602, 605, 1, 2]  # scored on the asserts the prompt does not show
    good = [fenced(solutions[i]) for i in ids]
    bad = [fenced("def nothing():\n    return None")] * len(ids)
    scores = reward.score_batch(good + bad, [records[i] for i in ids] * 2)
    assert scores == [1.0] * 4 + [0.0] * 4


def test_fraction_counts_asserts_and_is_one_only_when_all_pass(records):
    record = {
        "test_list": ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 7"],
        "test_setup_code": "",
        "index": 0,
    }
    doubles = fenced("def f(x):\n    return 2 * x")
    assert REWARDS["code_tests_fraction"](doubles, record) == pytest.approx(2 / 3)
    assert REWARDS["code_tests"](doubles, record) == 0.0
    assert CodeTestsReward(fraction=True)(fenced("def f(x):\n    return {1: 2, 2: 4, 3: 7}[x]"), record) == 1.0


@pytest.mark.parametrize(
    "attack",
    [
        "import sys\nsys.exit(0)",  # leave before the asserts
        "import os\nos._exit(0)",
        "import builtins\nbuiltins.int = lambda *a: 2\ndef f(x):\n    return 0",  # tamper with builtins
        "def f(x):\n    return 0\nraise SystemExit(0)",
        "while True:\n    pass",  # time out
    ],
)
def test_hostile_completions_earn_nothing(attack):
    record = {"test_list": ["assert f(1) == 2"], "test_setup_code": "", "index": 0}
    assert CodeTestsReward(timeout_s=3.0)(fenced(attack), record) == 0.0


def test_empty_tests_are_refused():
    with pytest.raises(ValueError, match="test_list"):
        REWARDS["code_tests"](fenced("x = 1"), {"test_list": [], "index": 3})
    with pytest.raises(ValueError, match="assert"):
        REWARDS["code_tests"](fenced("x = 1"), {"test_list": ["print(1)"], "index": 3})


def test_every_reference_solution_passes():
    """No false negatives: MBPP's own solutions for every training id and the test split pass every assert
    (all 884 were checked once; here a spread of them, to keep the suite fast)."""
    problems = read_mbpp(split_ids=list(MBPP_TRAIN_IDS)[::4]) + read_mbpp()[::10]
    records = [
        {
            "test_list": p["test_list"],
            "test_setup_code": p.get("test_setup_code") or "",
            "index": i,
            "solution_names": top_level_names(p["code"]),
        }
        for i, p in enumerate(problems)
    ]
    scores = REWARDS["code_tests"].score_batch([fenced(p["code"]) for p in problems], records)
    assert [p["task_id"] for p, s in zip(problems, scores) if s < 1] == []


def one_assert(test: str) -> dict:
    return {"test_list": [test], "test_setup_code": "", "index": 0}


# Completions that solve nothing but make the assert pass in the harness's plain MBPP program (code, then
# the asserts, in one module): each is a way a policy trained on the reward could learn to cheat.
ALWAYS_EQUAL = "class E:\n    def __eq__(self, other): return True\n    __hash__ = None\n"
ATTACKS = {
    "always-equal object": ("assert f(3) == [3, 3, 3]", ALWAYS_EQUAL + "def f(x): return E()"),
    "list subclass that lies": (
        "assert f(3) == [3, 3, 3]",
        "class L(list):\n    def __eq__(self, o): return True\n    __hash__ = None\ndef f(x): return L()",
    ),
    "int subclass that lies": (
        "assert h() == 7",
        "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\ndef h(): return I(0)",
    ),
    "dict subclass that lies": (
        "assert d() == {'a': 1}",
        "class D(dict):\n    def __eq__(self, o): return True\n    __hash__ = None\ndef d(): return D()",
    ),
    "shadowed built-in": ("assert sorted(g()) == [1, 2]", "sorted = lambda x: [1, 2]\ndef g(): return None"),
    "patched module attribute": (
        "assert math.isclose(h(), 0.5)",
        "import math\nmath.isclose = lambda *a, **k: True\ndef h(): return 9.0",
    ),
    "self-restoring patch inside the assert": (
        "assert g() == sorted([2, 1])",
        "_m = [9]\ndef _fake(x):\n    globals().pop('sorted', None)\n    return _m\n"
        "def g():\n    globals()['sorted'] = _fake\n    return _m",
    ),
    "checker rebound through frames": (
        "assert f(3) == [3, 3, 3]",
        ALWAYS_EQUAL + "import sys\ndef _yes(*a): return True\n"
        "def f(x):\n    fr = sys._getframe(1)\n    fr.f_globals['__llmkit_canon'] = _yes\n"
        "    fr.f_locals['__canon'] = _yes\n    return E()",
    ),
}

# Completions that read the test code itself (frames, tracebacks, the runner's source) to return the expected
# value. Against a program that holds the expected values these scored 1 (found in review); here the values
# are not in the process at all.
ORACLES = {
    "expected value from the caller's frame": (
        "import sys, ast\ndef f(*args):\n    for depth in range(1, 12):\n        try:\n"
        "            fr = sys._getframe(depth)\n        except ValueError:\n            break\n"
        "        for value in list(fr.f_locals.values()) + list(fr.f_globals.values()):\n"
        "            if isinstance(value, str) and '==' in value and 'assert' in value:\n"
        "                for node in ast.walk(ast.parse(value)):\n"
        "                    if isinstance(node, ast.Compare):\n"
        "                        return ast.literal_eval(node.comparators[0])\n    return None"
    ),
    "expected value from the frames' constants": (
        "import sys\ndef f(*args):\n    fr = sys._getframe(1)\n    while fr is not None:\n"
        "        for c in fr.f_code.co_consts:\n            if isinstance(c, list) and c and c[0] == 3:\n"
        "                return c\n        fr = fr.f_back\n    return None"
    ),
}


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_reading_the_test_code_finds_no_answer(name):
    assert REWARDS["code_tests"](fenced(ORACLES[name]), one_assert("assert f(3) == [3, 3, 3]")) == 0.0


def test_copying_the_shown_assert_earns_nothing(records):
    """A lookup table built from the prompt's assert passes that assert, which is not scored."""
    record = records[2]  # similar_elements
    shown = record["shown_tests"][0]
    table = (
        "def similar_elements(a, b):\n    return {"
        + shown.split("similar_elements")[1].split("==")[0].strip()
        + ": "
        + shown.split("==")[1].strip()
        + "}[(a, b)]"
    )
    assert REWARDS["code_tests"](fenced(table), {**record, "test_list": record["shown_tests"]}) == 1.0
    assert REWARDS["code_tests"](fenced(table), record) == 0.0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_pass_the_plain_program_and_earn_nothing_here(name):
    from llmkit.evaluation.sandbox import run_program
    from llmkit.evaluation.tasks.mbpp import mbpp_program

    test, code = ATTACKS[name]
    assert run_program(mbpp_program(one_assert(test), fenced(code), chat=True)).passed  # the weakness is real
    assert REWARDS["code_tests"](fenced(code), one_assert(test)) == 0.0, name


def test_honest_solutions_of_the_attacked_asserts_pass():
    honest = {
        "assert f(3) == [3, 3, 3]": "def f(x): return [x] * x",
        "assert h() == 7": "def h(): return 7",
        "assert d() == {'a': 1}": "import collections\ndef d(): return collections.Counter(a=1)",
        "assert sorted(g()) == [1, 2]": "def g(): return {2, 1}",
        "assert math.isclose(h(), 0.5)": "def h(): return 0.5",
        "assert g() == sorted([2, 1])": "def g(): return (1, 2) and [1, 2]",
    }
    records = [one_assert(t) for t in honest]
    assert REWARDS["code_tests"].score_batch([fenced(c) for c in honest.values()], records) == [1.0] * len(honest)


def test_completion_cannot_change_how_the_tests_parse():
    record = one_assert("assert f(1) == 1")
    assert REWARDS["code_tests"](fenced('def f(x): return None\nx = """'), record) == 0.0
    assert REWARDS["code_tests"](fenced("def f(x):\n    return x\nif True:"), record) == 0.0


def test_builtin_names_the_task_asks_for_are_the_completions():
    """MBPP 126 asks for a function called `sum`: with `solution_names` the tests call the completion's."""
    record = {"test_list": ["assert sum(10, 15) == 6"], "test_setup_code": "", "index": 0, "solution_names": ["sum"]}
    code = fenced("def sum(a, b):\n    return a + b - 19")
    assert REWARDS["code_tests"](code, record) == 1.0
    assert REWARDS["code_tests"](code, {**record, "solution_names": []}) == 0.0  # else the built-in sum is called


def test_reporting_code_reads_no_global_name():
    """The code that reads values takes everything from arguments: a rebound global cannot change it."""
    namespace: dict = {}
    exec(compile(_CHECKER, "<checker>", "exec"), namespace)
    ops = {ins.opname for ins in dis.get_instructions(namespace["__llmkit_canon"])}
    assert not ops & {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF"}


def test_the_program_never_holds_the_expected_values():
    plan = build_check_plan("def f(): return 0", ["assert sorted(f()) == [917, 4242]", "assert math.isclose(g(), 1.0)"])
    assert "917" not in plan.program and "4242" not in plan.program
    assert plan.checks == (("eq", [917, 4242]), ("truth", None))
    assert "__canon(__b[0](f()), __env)" in plan.program and "__m[0](g(), 1.0)" in plan.program


def report(values, status="passed"):
    return ExecResult(status, "", "netns", "namespaces", f"noise\n{REPORT_MARKER}{values!r}\n")


def test_judge_compares_reported_values_with_the_expected_ones_here():
    plan = build_check_plan("", ["assert f() == [1, 2]", "assert g() == {'a': (1,)}", "assert h() == 2", "assert k()"])
    assert judge(plan, report(["[1, 2]", "{'a': (1,)}", "2.0", "[0]"])) == [True, True, True, True]
    assert judge(plan, report(["(1, 2)", "{'a': [1]}", "nan", "[]"])) == [False, False, False, False]
    assert judge(plan, report([None, "{'a': (1,)}", "__import__('os')", "True"])) == [False, True, False, True]
    assert judge(plan, report(["[1, 2]", "{'a': (1,)}", "2", "True"], status="failed")) == [False] * 4
    assert judge(plan, report(["[1, 2]"])) == [False] * 4  # a report of the wrong shape
    no_report = ExecResult("passed", "", "netns", "namespaces", "nothing here\n")
    assert judge(plan, no_report) == [False] * 4


def test_fraction_comes_from_one_run_per_completion():
    record = {
        "test_list": ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 7", "assert f(4) == 8"],
        "test_setup_code": "",
        "index": 0,
    }
    crashes_on_3 = fenced("def f(x):\n    if x == 3:\n        raise ValueError(x)\n    return 2 * x")
    assert REWARDS["code_tests"].verdicts([crashes_on_3], [record]) == [[True, True, False, True]]
    assert REWARDS["code_tests_fraction"](crashes_on_3, record) == pytest.approx(3 / 4)
