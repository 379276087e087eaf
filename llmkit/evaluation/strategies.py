"""Inference strategies for multiple-choice tasks: self-consistency and H-GIVR (docs/methods/hgivr.md).

H-GIVR (History-Guided Iterative Visual Reasoning): describe the input, then answer repeatedly with the
list of earlier answers given as references, re-describing on even rounds, and stop as soon as an
answer repeats (any earlier answer, or only the previous one with `consecutive=True`), at most 10
rounds. For text-only models the description is the problem's context/caption and costs no call.
Choices made where the paper is silent (documented here and in eval/README.md): at the cap the most
frequent answer wins (ties: the latest); an unparsed answer (None) never confirms a repeat.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


@dataclass
class HGIVRTrace:
    """What happened for one question: the answers in order, descriptions, call counts, the outcome."""

    answers: list[Hashable | None] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    answer_calls: int = 0
    description_calls: int = 0
    final: Hashable | None = None
    stopped_by: str = ""  # "repeat" or "cap"


def confirmed(answers: Sequence[Hashable | None], consecutive: bool) -> bool:
    """True when the newest answer repeats an earlier one (only the previous one if `consecutive`)."""
    if len(answers) < 2 or answers[-1] is None:
        return False
    if consecutive:
        return answers[-1] == answers[-2]
    return answers[-1] in answers[:-1]


def vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """Most frequent non-None answer; ties go to the one given latest; None if there is none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in reversed(answers) if a is not None and counts[a] == best)


def hgivr_step(trace: HGIVRTrace, round_index: int, max_rounds: int, consecutive: bool) -> bool:
    """Apply the stopping rule after answer `round_index` (1-based); return True when the question is done."""
    if confirmed(trace.answers, consecutive):
        trace.final, trace.stopped_by = trace.answers[-1], "repeat"
        return True
    if round_index >= max_rounds:
        trace.final, trace.stopped_by = vote(trace.answers), "cap"
        return True
    return False


def run_hgivr(
    questions: Sequence[Any],
    describe: Callable[[list[Any], int], list[str | None]],
    answer: Callable[[list[Any], list[list[str]], list[list[Hashable | None]]], list[Hashable | None]],
    max_rounds: int = 10,
    consecutive: bool = False,
    describe_is_call: bool = True,
) -> list[HGIVRTrace]:
    """Run H-GIVR for all questions in lockstep rounds (one batched call per round for those still going).

    `describe(questions, round)` returns one description per question (None: nothing new);
    `answer(questions, descriptions, histories)` returns one parsed answer per question.
    Re-observation happens on even rounds; `describe_is_call` says whether describing costs a model call.
    """
    traces = [HGIVRTrace() for _ in questions]
    active = list(range(len(questions)))
    for round_index in range(1, max_rounds + 1):
        if not active:
            break
        if round_index == 1 or round_index % 2 == 0:
            new = describe([questions[i] for i in active], round_index)
            for i, desc in zip(active, new):
                if describe_is_call:
                    traces[i].description_calls += 1
                if desc and (round_index == 1 or desc not in traces[i].descriptions):
                    traces[i].descriptions.append(desc)
        replies = answer(
            [questions[i] for i in active],
            [traces[i].descriptions for i in active],
            [list(traces[i].answers) for i in active],
        )
        still = []
        for i, reply in zip(active, replies):
            traces[i].answers.append(reply)
            traces[i].answer_calls += 1
            if not hgivr_step(traces[i], round_index, max_rounds, consecutive):
                still.append(i)
        active = still
    return traces


def self_consistency(samples_per_question: Sequence[Sequence[Hashable | None]]) -> list[Hashable | None]:
    """Majority vote over each question's sampled answers (the baseline at matched call counts)."""
    return [vote(samples) for samples in samples_per_question]


def strategy_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Run-level metrics of a strategy from its per-question records.

    Each record is {"calls": answer calls made for the question, "stopped_by": "repeat" | "cap" (H-GIVR)}.
    Returns responses_per_question (mean calls) and, when the records say how questions stopped,
    stopped_at_cap (how many ran to the round cap).

    >>> strategy_metrics([{"calls": 2, "stopped_by": "repeat"}, {"calls": 10, "stopped_by": "cap"}])
    {'responses_per_question': 6.0, 'stopped_at_cap': 1.0}
    """
    if not records:
        return {}
    metrics = {"responses_per_question": sum(r["calls"] for r in records) / len(records)}
    if any("stopped_by" in r for r in records):
        metrics["stopped_at_cap"] = float(sum(r.get("stopped_by") == "cap" for r in records))
    return metrics
