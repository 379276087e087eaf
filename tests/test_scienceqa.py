"""ScienceQA scoring: gold scores 100%, a constant answer scores its share, breakdowns add up, extraction."""

from __future__ import annotations

import pytest

from llmkit.evaluation.tasks import get_task
from llmkit.evaluation.tasks.scienceqa import extract_choice, qcm_prompt
from llmkit.generation.types import Completion, GenerationOutput


def outputs(texts):
    return [GenerationOutput("", [Completion(t, [], "stop")]) for t in texts]


@pytest.fixture(scope="module")
def task_and_problems():
    task = get_task("scienceqa")
    return task, task.load()


def test_gold_scores_100_and_groups_add_up(task_and_problems):
    task, problems = task_and_problems
    assert len(problems) == 4241
    gold = outputs([f"The answer is ({'ABCDE'[p['answer']]})." for p in problems])
    m = task.score(problems, gold, chat=True, ks=[1]).metrics
    assert m["accuracy"] == 100.0 and m["unparsed_rate"] == 0.0
    assert m["accuracy_strict"] == 100.0 and m["unparsed_rate_strict"] == 0.0
    assert m["n_NAT"] + m["n_SOC"] + m["n_LAN"] == 4241 and (m["n_NAT"], m["n_SOC"], m["n_LAN"]) == (2252, 889, 1100)
    assert m["n_G1-6"] + m["n_G7-12"] == 4241 and m["n_G1-6"] == 2724
    assert m["n_IMG"] == 2017 and m["n_NO"] == 1435  # TXT and IMG overlap (text hint and image)
    assert all(m[g] == 100.0 for g in ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12"))


def test_constant_answer_scores_what_the_distribution_predicts(task_and_problems):
    task, problems = task_and_problems
    m = task.score(problems, outputs(["A"] * len(problems)), chat=True, ks=[1]).metrics
    expected = 100.0 * sum(p["answer"] == 0 for p in problems) / len(problems)
    assert m["accuracy"] == pytest.approx(expected)
    nat = [p for p in problems if p["subject"] == "natural science"]
    assert m["NAT"] == pytest.approx(100.0 * sum(p["answer"] == 0 for p in nat) / len(nat))
    weighted = sum(m[g] * m[f"n_{g}"] for g in ("NAT", "SOC", "LAN")) / len(problems)
    assert weighted == pytest.approx(m["accuracy"])


def test_text_only_subset():
    assert len(get_task("scienceqa-text").load()) == 2224


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is (B).", 1),
        ("B", 1),
        ("(C) gravity", 2),
        ("Answer: A.", 0),
        ("b) no", None),
        ("I think it is apostrophe", 1),
        ("The answer is E", None),
        ("nothing useful", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, ["chiasmus", "apostrophe", "gravity"]) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is (B).", 1),
        ("B", 1),
        ("(C) gravity", 2),
        ("Answer: A.", 0),
        ("I think it is apostrophe", None),
        ("gravity", None),
        ("nothing useful", None),
    ],
)
def test_extract_choice_letters_only(text, expected):
    assert extract_choice(text, ["chiasmus", "apostrophe", "gravity"], letters_only=True) == expected


def test_strict_and_lenient_accuracy_on_hand_made_answers():
    """Lenient counts an answer naming one option's text as that option; strict reads letters only."""
    problem = {
        "choices": ["chiasmus", "apostrophe", "gravity"],
        "answer": 1,
        "subject": "language science",
        "grade": "grade5",
        "hint": "",
        "image": None,
    }
    answers = [
        "The answer is (B).",  # a letter, right: both
        "It is apostrophe.",  # the right option's text, no letter: lenient only
        "gravity, surely",  # a wrong option's text: wrong in both, unparsed in strict
        "(A) chiasmus",  # a letter, wrong: both parse it
        "no idea",
    ]  # nothing: unparsed in both
    m = get_task("scienceqa").score([problem] * len(answers), outputs(answers), chat=True, ks=[1]).metrics
    assert m["accuracy"] == pytest.approx(100 * 2 / 5) and m["unparsed_rate"] == pytest.approx(100 * 1 / 5)
    assert m["accuracy_strict"] == pytest.approx(100 * 1 / 5) and m["unparsed_rate_strict"] == pytest.approx(
        100 * 3 / 5
    )
    assert m["LAN"] == m["accuracy"]  # the groups follow the lenient parse


def test_prompt_uses_caption_only_when_asked(task_and_problems):
    _, problems = task_and_problems
    with_image = next(p for p in problems if p["image"] and p["caption"])
    assert "Image: " + with_image["caption"] in qcm_prompt(with_image, use_caption=True)
    assert "Image: " not in qcm_prompt(with_image, use_caption=False)


def test_harness_writes_results_samples_report_and_plot(tmp_path):
    import json

    from llmkit.evaluation.harness import EvalConfig, run_eval

    class Constant:
        def generate(self, prompts, params):
            return outputs(["The answer is (A)."] * len(prompts))

        def describe(self):
            return {"backend": "constant"}

    cfg = EvalConfig(task="scienceqa", limit=50, output_dir=str(tmp_path / "r"))
    results = run_eval(get_task("scienceqa"), Constant(), cfg)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    for key in (
        "task",
        "metrics",
        "sampling",
        "chat_template",
        "generator",
        "versions",
        "git",
        "wall_seconds",
        "timeout_s",
        "command",
    ):
        assert key in saved, key
    assert saved["sampling"]["seed"] == 1234 and saved["num_problems"] == 50
    assert len((tmp_path / "r" / "samples.jsonl").read_text().splitlines()) == 50
    assert (tmp_path / "r" / "accuracy_by_group.png").stat().st_size > 1000
    assert "accuracy_by_group.png" in (tmp_path / "r" / "report.md").read_text()
    assert results["metrics"]["accuracy"] == saved["metrics"]["accuracy"]
