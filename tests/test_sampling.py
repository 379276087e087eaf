"""The n-sample primitive's disagreement measures, on hand-computed examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit.generation.sampling import (
    disagreement,
    edit_distance,
    embedding_variance,
    jaccard,
    mean_pairwise_edit_distance,
    mean_pairwise_jaccard,
    sample_n,
    unique_answer_ratio,
)
from llmkit.generation.types import Completion, GenerationOutput, SamplingParams


def test_measures_by_hand():
    assert unique_answer_ratio(["A", "A", "B", None]) == 0.5
    assert unique_answer_ratio(["A", "A", "A"]) == pytest.approx(1 / 3)
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 1.0
    assert mean_pairwise_jaccard([{1, 2}, {2, 3}, {1, 2}]) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert mean_pairwise_edit_distance(["abc", "abc", "abc"]) == 0.0
    assert mean_pairwise_edit_distance(["ab", "ac"]) == 0.5
    assert embedding_variance(np.array([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    assert embedding_variance(np.ones((3, 4))) == 0.0


def test_identical_outputs_give_zero_disagreement_and_malformed_raise_failure():
    same = disagreement(["x", "x", "x"], [frozenset({"a"})] * 3)
    assert same["edit_distance"] == 0.0 and same["set_jaccard"] == 1.0 and same["parse_failure_rate"] == 0.0
    mixed = disagreement(["x", "{bad", "y"], [frozenset({"a"}), None, frozenset({"b"})])
    assert mixed["parse_failure_rate"] == pytest.approx(1 / 3) and mixed["set_jaccard"] == 0.0


class Scripted:
    def generate(self, prompts, params):
        texts = ['{"e": ["a"]}', '{"e": ["a", "b"]}', "not json"]
        return [GenerationOutput(str(p), [Completion(t, [], "stop") for t in texts[: params.n]]) for p in prompts]


def test_sample_n_parses_and_measures():
    parse = lambda text: frozenset(json.loads(text)["e"])
    sets = sample_n(
        Scripted(),
        ["p1", "p2"],
        SamplingParams(n=3, temperature=0.8),
        parse,
        embed=lambda texts: np.array([[len(t), 0.0] for t in texts]),
    )
    assert len(sets) == 2 and sets[0].parse_ok == [True, True, False]
    m = sets[0].measures
    assert m["parse_failure_rate"] == pytest.approx(1 / 3) and m["set_jaccard"] == pytest.approx(0.5)
    assert m["embedding_variance"] > 0
