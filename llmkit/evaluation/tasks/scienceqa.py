"""ScienceQA (official test split, 4,241 problems; text only, image captions as context): QCM→A.

Breakdown as in the ScienceQA paper's evaluation code: subject (NAT/SOC/LAN), context modality (TXT =
has a text hint, IMG = has an image, NO = neither; TXT and IMG overlap), grade (G1-6 / G7-12).
Answers are parsed twice: `accuracy` is lenient (a letter, else the one option whose text the answer
names) and `accuracy_strict` reads letters only, as published ScienceQA numbers do.
"""

from __future__ import annotations

import itertools
import re
import string
from dataclasses import replace
from typing import Any

from llmkit.data.loading import read_records
from llmkit.evaluation.harness import Scored, Task
from llmkit.generation.types import Completion, GenerationOutput, Prompt, SamplingParams

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
LETTERS = string.ascii_uppercase
# H-GIVR round r samples with seed + r × this stride: far from the chunk seeds (seed + a problem position)
ROUND_SEED_STRIDE = 100_003
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def context_text(problem: dict[str, Any], use_caption: bool) -> str:
    """The text hint, plus the image caption when asked (the caption stands in for the image)."""
    parts = [problem.get("hint") or ""]
    if use_caption and problem.get("image") and problem.get("caption"):
        parts.append(f"Image: {problem['caption']}")
    return " ".join(p for p in parts if p).strip() or "N/A"


def qcm_prompt(problem: dict[str, Any], use_caption: bool) -> str:
    """Question, Context, Multiple options (the QCM→A format)."""
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(problem["choices"]))
    return f"Question: {problem['question']}\nContext: {context_text(problem, use_caption)}\nOptions: {options}\n"


def extract_choice(text: str, choices: list[str], letters_only: bool = False) -> int | None:
    """The chosen option's index from a free-form answer: a letter in the usual forms, else (unless
    `letters_only`) the option's text when exactly one option's text appears in the answer."""
    valid = LETTERS[: len(choices)]
    patterns = [
        rf"answer is:?\s*\(?([{valid}])\)?(?![a-z])",
        rf"^\s*\(?([{valid}])\)?(?:[.):\s]|$)",
        rf"\(([{valid}])\)",
        rf"\b([{valid}])[.)](?:\s|$)",
    ]
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE if pattern.startswith("answer") else 0)
        if match:
            return valid.index(match.group(1).upper())
    if letters_only:
        return None
    lowered = text.lower()
    hits = [i for i, c in enumerate(choices) if c and c.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def scienceqa_verdict(text: str, problem: dict[str, Any]) -> dict[str, Any]:
    """One answer's verdict under both parses: lenient (`choice`, `correct`, `parsed`: a letter, else an
    option's text) and strict (`choice_strict`, `correct_strict`: a letter only)."""
    choice = extract_choice(text, problem["choices"])
    strict = extract_choice(text, problem["choices"], letters_only=True)
    return {
        "correct": choice == problem["answer"],
        "choice": choice,
        "gold": problem["answer"],
        "parsed": choice is not None,
        "correct_strict": strict == problem["answer"],
        "choice_strict": strict,
    }


def problem_groups(problem: dict[str, Any]) -> list[str]:
    """The breakdown groups one problem belongs to."""
    groups = [SUBJECTS[problem["subject"]]]
    if problem.get("hint"):
        groups.append("TXT")
    if problem.get("image"):
        groups.append("IMG")
    if not problem.get("hint") and not problem.get("image"):
        groups.append("NO")
    grade = int(str(problem["grade"]).replace("grade", ""))
    groups.append("G1-6" if grade <= 6 else "G7-12")
    return groups


def breakdown(problems: list[dict[str, Any]], correct: list[bool]) -> dict[str, float]:
    """Accuracy overall and per group (percent), with the group sizes under `n_<group>`."""
    out: dict[str, float] = {"accuracy": 100.0 * sum(correct) / len(correct)}
    totals: dict[str, list[int]] = {}
    for problem, ok in zip(problems, correct):
        for group in problem_groups(problem):
            hit, n = totals.get(group, [0, 0])
            totals[group] = [hit + int(ok), n + 1]
    for group in ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12"):
        if group in totals:
            hit, n = totals[group]
            out[group] = 100.0 * hit / n
            out[f"n_{group}"] = float(n)
    return out


class ScienceQA(Task):
    """QCM→A multiple choice; `use_caption` adds the image caption to the context; `text_only` keeps the
    2,224 problems without an image."""

    name = "scienceqa"

    def __init__(self, data_path: str | None = None, use_caption: bool = True, text_only: bool = False):
        self.data_path = data_path
        self.use_caption = use_caption
        self.text_only = text_only

    def load(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The test problems in file order (optionally only those without an image)."""
        problems = read_records(self.data_path or "scienceqa/test.jsonl", split="test")
        for p in problems:
            p["id"] = f"ScienceQA/{p['pid']}"
        if self.text_only:
            problems = [p for p in problems if not p.get("image")]
        return problems[:limit]

    def prompt(self, problem: dict[str, Any], chat: bool) -> Prompt:
        """QCM prompt; chat asks for the letter, completion ends with 'Answer: The answer is ('."""
        text = qcm_prompt(problem, self.use_caption)
        if chat:
            return [{"role": "user", "content": text + INSTRUCTION}]
        return text + "Answer: The answer is ("

    def run_strategy(self, strategy, problems, generator, params, cfg):
        """H-GIVR or self-consistency (see `run_scienceqa_strategy`)."""
        return run_scienceqa_strategy(self, strategy, problems, generator, params, cfg)

    def score(self, problems, outputs: list[GenerationOutput], chat: bool, ks: list[int]) -> Scored:
        """Accuracy of the first sample, overall and by the paper's groups; unparsed answers count wrong.

        Two parses: `accuracy` (and the groups, `unparsed_rate`) is lenient, an answer naming exactly one
        option's text counts as that option; `accuracy_strict` (and `unparsed_rate_strict`) reads letters
        only, as the published ScienceQA evaluations do, so compare that one with the literature.
        """
        verdicts = [
            [scienceqa_verdict(c.text if chat else "(" + c.text, p) for c in o.completions]
            for p, o in zip(problems, outputs)
        ]
        metrics = breakdown(problems, [v[0]["correct"] for v in verdicts])
        metrics["unparsed_rate"] = 100.0 * sum(not v[0]["parsed"] for v in verdicts) / len(verdicts)
        metrics["accuracy_strict"] = 100.0 * sum(v[0]["correct_strict"] for v in verdicts) / len(verdicts)
        metrics["unparsed_rate_strict"] = 100.0 * sum(v[0]["choice_strict"] is None for v in verdicts) / len(verdicts)
        return Scored(
            metrics=metrics, verdicts=verdicts, extra={"use_caption": self.use_caption, "text_only": self.text_only}
        )


def hgivr_prompt(problem: dict[str, Any], descriptions: list[str], history: list[int | None]) -> list[dict[str, str]]:
    """An H-GIVR answering turn: question, the descriptions so far, options, earlier answers as references."""
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(problem["choices"]))
    lines = (
        [f"Question: {problem['question']}", "Descriptions:"]
        + [f"- {d}" for d in descriptions]
        + [f"Options: {options}"]
    )
    earlier = [f"({LETTERS[a]})" for a in history if a is not None]
    if earlier:
        lines.append("Previous answers (references only; they may be wrong): " + ", ".join(earlier))
    return [{"role": "user", "content": "\n".join(lines) + "\n" + INSTRUCTION}]


def _final_output(choice: int | None, calls: int, stopped_by: str | None = None) -> GenerationOutput:
    """The strategy's answer as one output; its per-question record (calls, how it stopped) in metadata."""
    text = f"The answer is ({LETTERS[choice]})." if choice is not None else "(no answer)"
    record: dict[str, Any] = {"calls": calls, **({"stopped_by": stopped_by} if stopped_by else {})}
    return GenerationOutput(
        prompt_text=f"[{calls} model calls]", completions=[Completion(text, [], "stop")], metadata={"strategy": record}
    )


def run_scienceqa_strategy(task: "ScienceQA", strategy: str, problems, generator, params: SamplingParams, cfg):
    """H-GIVR or self-consistency on ScienceQA: one final-answer output per problem, each with its
    per-question record in `metadata["strategy"]` (the harness turns those into metrics).

    Text-only models: the description is the problem's context (hint + caption), so describing costs
    no call and re-observation adds nothing new; the call count is answers only, as in the paper.
    """
    from llmkit.evaluation.strategies import run_hgivr, self_consistency

    if strategy == "self_consistency":
        sampled = SamplingParams(
            n=cfg.sc_samples,
            temperature=cfg.sc_temperature,
            top_p=params.top_p,
            max_new_tokens=params.max_new_tokens,
            seed=params.seed,
        )
        outs = generator.generate([task.prompt(p, chat=True) for p in problems], sampled)
        choices = [[extract_choice(c.text, p["choices"]) for c in o.completions] for p, o in zip(problems, outs)]
        finals = self_consistency(choices)
        return [_final_output(f, cfg.sc_samples) for f in finals]
    if strategy != "hgivr":
        raise ValueError(strategy)
    by_index = {i: p for i, p in enumerate(problems)}

    def describe(indices, round_index):
        return [context_text(by_index[i], task.use_caption) for i in indices]

    answer_rounds = itertools.count()

    def answer(indices, descriptions, histories):
        prompts = [hgivr_prompt(by_index[i], d, h) for i, d, h in zip(indices, descriptions, histories)]
        # each round its own seed: with sampling, rounds sharing one random stream would agree more often
        # than independent draws and stop the repeat rule early (greedy decoding is unaffected)
        round_index = next(answer_rounds)
        round_params = (
            params if params.seed is None else replace(params, seed=params.seed + ROUND_SEED_STRIDE * round_index)
        )
        outs = generator.generate(prompts, round_params)
        return [extract_choice(o.completions[0].text, by_index[i]["choices"]) for i, o in zip(indices, outs)]

    traces = run_hgivr(
        list(by_index), describe, answer, cfg.hgivr_max_rounds, cfg.hgivr_consecutive, describe_is_call=False
    )
    return [_final_output(t.final, t.answer_calls, t.stopped_by) for t in traces]
