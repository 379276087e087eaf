"""LaMAI: uncertainty, threshold choice, AUROC, informativeness / representativeness / selection against
hand-computed values; the loop on a scripted generator and the rule-based oracle; bad config values."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmkit.generation.types import Completion, GenerationOutput, Generator
from llmkit.prompting.lamai import (
    InquiryConfig,
    SentenceOracle,
    answer_uncertainty,
    auroc,
    choose_threshold,
    clean_question,
    informativeness,
    representativeness,
    run_inquiry,
    select_question,
)

ROOT = Path(__file__).resolve().parents[1]


def test_answer_uncertainty_hand_values():
    # two orthogonal unit vectors: centroid (.5,.5), each at squared distance .5 → .5
    assert answer_uncertainty(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.5)
    # identical answers → 0; rows are normalised first, so scale does not matter
    assert answer_uncertainty(np.array([[3.0, 4.0], [0.6, 0.8]])) == pytest.approx(0.0)
    # opposite unit vectors: centroid 0, distance 1 each → 1 (the maximum)
    assert answer_uncertainty(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(1.0)
    # three: (1,0),(1,0),(0,1): centroid (2/3,1/3); sq dists 2/9, 2/9, 8/9 → mean 4/9
    assert answer_uncertainty(np.array([[1.0, 0], [1, 0], [0, 1]])) == pytest.approx(4 / 9)


def test_choose_threshold_accuracy_rule():
    u = [0.1, 0.2, 0.3, 0.4]
    # errors exactly above 0.2 → t = 0.2 separates perfectly
    assert choose_threshold(u, [False, False, True, True]) == pytest.approx(0.2)
    # all wrong → ask always (−inf); all right → t at the max (never ask), the largest on ties
    assert choose_threshold(u, [True] * 4) == -math.inf
    assert choose_threshold(u, [False] * 4) == pytest.approx(0.4)
    # [F, T, F, T]: t=-inf → 2/4, .1 → 3/4, .2 → 2/4, .3 → 3/4, .4 → 2/4; tie .1/.3 → the larger, .3
    assert choose_threshold(u, [False, True, False, True]) == pytest.approx(0.3)


def test_choose_threshold_ask_rate_rule_and_errors():
    u = [0.1, 0.2, 0.3, 0.4]
    assert choose_threshold(u, [False] * 4, "ask_rate", 0.5) == pytest.approx(0.2)  # 2 of 4 above .2
    assert choose_threshold(u, [False] * 4, "ask_rate", 1.0) == -math.inf
    assert choose_threshold(u, [False] * 4, "ask_rate", 0.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="rule"):
        choose_threshold(u, [False] * 4, "median")
    with pytest.raises(ValueError):
        choose_threshold(u, [False] * 3)


def test_auroc_hand_values():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # pos {.5,.3}, neg {.3,.1}: pairs (.5>.3)1 (.5>.1)1 (.3=.3).5 (.3>.1)1 → 3.5/4
    assert auroc([0.5, 0.3, 0.3, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_informativeness_representativeness_selection():
    assert informativeness(0.5, [0.2, 0.4]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        informativeness(0.5, [])
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # cos sims: (0,1)=1, (0,2)=0, (1,2)=0 → density [.5, .5, 0]
    assert representativeness(e, "density") == pytest.approx([0.5, 0.5, 0.0])
    assert representativeness(e, "diversity") == pytest.approx([0.5, 0.5, 1.0])
    assert representativeness(e[:1]) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="mode"):
        representativeness(e, "coverage")
    # scores: 1·[.1,.3,.3] + 2·[.5,.5,1] = [1.1, 1.3, 2.3] → 2 ; with w_rep 0, tie .3/.3 → the first (1)
    best, scores = select_question([0.1, 0.3, 0.3], [0.5, 0.5, 1.0], 1.0, 2.0)
    assert best == 2 and scores == pytest.approx([1.1, 1.3, 2.3])
    assert select_question([0.1, 0.3, 0.3], [0.5, 0.5, 1.0], 1.0, 0.0)[0] == 1


def test_clean_question_and_oracle():
    assert clean_question("Question: What is the allele?\nmore") == "What is the allele?"
    oracle = SentenceOracle()
    p = {"hint": "The sky is blue. The allele H is for a tall stem. Bob likes tea."}
    assert oracle.reply([p], ["Which allele is for the tall stem?"]) == ["The allele H is for a tall stem."]
    assert oracle.reply([{"hint": ""}], ["anything?"]) == ["I don't know."]


class Scripted(Generator):
    """Answers: certain ('(A)' every sample) once the dialogue holds the key, or if the problem is marked easy;
    otherwise alternating '(A)' / '(B)'. Questions: a fixed list. Imagined replies: 'maybe'."""

    backend_name = "scripted"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params):
        outs = []
        for p in prompts:
            text = p[-1]["content"] if isinstance(p, list) else p
            self.calls.append(text)
            if "ONE short question" in text:
                texts = ["Question: What is KEY?", "What color is it?", "What color is it?"][: params.n]
            elif "Write their short reply" in text:
                texts = ["maybe"] * params.n
            elif "KEY=A" in text or "easy" in text:
                texts = ["(A)"] * params.n
            else:
                texts = ["(A)" if i % 2 == 0 else "(B)" for i in range(params.n)]
            outs.append(GenerationOutput(text, [Completion(t, [], "stop") for t in texts]))
        return outs


def fake_embed(texts):
    """'(A)'→e0, '(B)'→e1, anything with KEY→e2, else e3 (one-hot, so variances are exact)."""

    def vec(t):
        i = 0 if "(A)" in t else 1 if "(B)" in t else 2 if "KEY" in t else 3
        return np.eye(4)[i]

    return np.stack([vec(t) for t in texts])


class KeyUser:
    def reply(self, problems, questions):
        return ["KEY=A" if "KEY" in q else "no idea" for q in questions]


def problem(pid, question="Which?"):
    return {
        "id": pid,
        "pid": pid,
        "question": question,
        "choices": ["yes", "no"],
        "answer": 0,
        "hint": "KEY=A",
        "image": None,
        "caption": None,
    }


def test_loop_asks_when_uncertain_and_answers_directly_when_certain():
    gen = Scripted()
    s = InquiryConfig(samples=2, threshold=0.1, max_rounds=3, candidates=3, selection="lamai")
    recs = run_inquiry(gen, [problem("hard"), problem("e", "An easy one?")], s, fake_embed, KeyUser())
    hard, easy = recs
    # hard: u0 = .5 (A/B), LaMAI picks the KEY question (imagined reply 'maybe' leaves u at .5 for both
    # candidates, so informativeness ties at 0 and the first, the KEY question, wins); reply KEY=A → u 0 → stop
    assert hard["uncertainty"] == pytest.approx([0.5, 0.0])
    assert hard["questions_asked"] == 1
    assert hard["dialogue"] == [{"question": "What is KEY?", "reply": "KEY=A"}]
    assert hard["rounds"][0]["candidates"] == ["What is KEY?", "What color is it?"]  # duplicate dropped
    assert hard["correct"] and hard["answer"] == "(A)"
    # easy: certain at once → no question, answered directly
    assert easy["uncertainty"] == [0.0] and easy["questions_asked"] == 0 and easy["correct"]
    assert not any("ONE short question" in c and "easy" in c for c in gen.calls)
    # the hidden hint never reaches the answering prompts
    assert all("KEY=A" not in c for c in gen.calls if "ONE short question" in c)


def test_loop_stops_at_round_limit():
    gen = Scripted()

    class Useless:
        def reply(self, problems, questions):
            return ["no idea"] * len(questions)

    s = InquiryConfig(samples=2, threshold=0.1, max_rounds=2, candidates=2, selection="first")
    (rec,) = run_inquiry(gen, [problem("x")], s, fake_embed, Useless())
    assert rec["questions_asked"] == 2 and len(rec["uncertainty"]) == 3
    assert all(u == pytest.approx(0.5) for u in rec["uncertainty"])
    s0 = InquiryConfig(samples=2, threshold=0.1, max_rounds=0)
    assert run_inquiry(gen, [problem("x")], s0, fake_embed, Useless())[0]["questions_asked"] == 0
    with pytest.raises(ValueError, match="selection"):
        run_inquiry(gen, [problem("x")], InquiryConfig(selection="best"), fake_embed, Useless())


def test_lamai_prefers_the_informative_question():
    """Imagined replies that contain KEY make the answers certain only after the KEY question."""

    class Imagines(Scripted):
        def generate(self, prompts, params):
            outs = super().generate(prompts, params)
            for p, o in zip(prompts, outs):
                text = p[-1]["content"]
                if "Write their short reply" in text and "asked: What is KEY?" in text:
                    o.completions = [Completion("KEY=A", [], "stop") for _ in o.completions]
            return outs

    s = InquiryConfig(samples=2, threshold=0.1, max_rounds=1, candidates=3, selection="lamai")
    gen_q = ["What color is it?", "Question: What is KEY?"]

    class Reordered(Imagines):
        def generate(self, prompts, params):
            outs = super().generate(prompts, params)
            for p, o in zip(prompts, outs):
                if "ONE short question" in p[-1]["content"]:
                    o.completions = [Completion(t, [], "stop") for t in gen_q]
            return outs

    (rec,) = run_inquiry(Reordered(), [problem("x")], s, fake_embed, KeyUser())
    r = rec["rounds"][0]
    assert r["informativeness"] == pytest.approx([0.0, 0.5])
    assert r["question"] == "What is KEY?" and rec["correct"]


def test_withheld_prompts():
    from llmkit.prompting.lamai import answer_prompt, context_prompt

    p = problem("x")
    assert "KEY=A" not in answer_prompt(p, [])[0]["content"]
    assert "Context: N/A" in answer_prompt(p, [])[0]["content"]
    assert "KEY=A" in context_prompt(p)[0]["content"]
    assert "User's reply: r" in answer_prompt(p, [("q", "r")])[0]["content"]


def run_recipe(*args):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes/lamai/run.py"),
            "--config",
            str(ROOT / "recipes/lamai/configs/tiny_cpu.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--method.samples", "1"], "method.samples"),
        (["--method.rep_mode", "coverage"], "method.rep_mode"),
        (["--method.threshold_rule", "median"], "method.threshold_rule"),
        (["--method.w_info", "0", "--method.w_rep", "0"], "method.w_info"),
        (["--run.user", "human"], "run.user"),
        (["--method.gamma", "1"], "method.gamma"),
    ],
)
def test_bad_config_one_line_error(args, needle):
    proc = run_recipe(*args)
    assert proc.returncode == 2, proc.stderr[-500:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-500:]
