"""GSM8K answer extraction and scoring."""

from __future__ import annotations

import pytest

from llmkit.evaluation.answers import extract_final_number, gsm8k_correct, gsm8k_gold, normalize_number
from llmkit.evaluation.tasks import get_task
from llmkit.generation.types import Completion, GenerationOutput


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7.\nThe answer is 7.", "7"),
        ("The answer is: $1,234.", "1234"),
        ("#### 18", "18"),
        ("first 5, then \\boxed{42} and later 9", "42"),
        ("it costs -3.50 dollars", "-3.5"),
        ("We get 12 apples, then 15", "15"),
        ("The answer is 7.0", "7"),
        ("no numbers here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_gold_and_normalisation():
    assert gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18") == "18"
    assert normalize_number("1,000") == "1000" and normalize_number("0.50") == "0.5" and normalize_number("abc") is None
    with pytest.raises(ValueError):
        gsm8k_gold("no marker")
    assert gsm8k_correct("The answer is 18.", "18") and not gsm8k_correct("The answer is 19.", "18")


def test_gold_solutions_score_100_and_constant_scores_its_share():
    task = get_task("gsm8k")
    problems = task.load()
    assert len(problems) == 1319
    gold = [GenerationOutput("", [Completion(p["answer"], [], "stop")]) for p in problems]
    assert task.score(problems, gold, chat=True, ks=[1]).metrics["accuracy"] == 1.0
    constant = [GenerationOutput("", [Completion("The answer is 3.", [], "stop")]) for _ in problems]
    expected = sum(p["gold"] == "3" for p in problems) / len(problems)
    assert task.score(problems, constant, chat=True, ks=[1]).metrics["accuracy"] == pytest.approx(expected)


def test_task_data_errors_name_the_file_and_line(tmp_path):
    from llmkit.errors import DataError

    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(DataError, match=rf"{bad}:2: malformed JSON"):
        get_task("gsm8k", data_path=str(bad)).load()
    with pytest.raises(DataError, match="data file not found"):
        get_task("scienceqa", data_path=str(tmp_path / "none.jsonl")).load()
