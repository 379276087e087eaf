"""Active prompting (APIE, CAMS): the pure functions on crafted outputs, the selectors over a fake generator,
the split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.generation.types import Completion, GenerationOutput, Generator, SamplingParams
from llmkit.prompting.active import (
    balanced_sample,
    bio_to_entities,
    combine_uncertainties,
    content_uncertainty,
    difficulty_cells,
    format_ie_answer,
    format_uncertainty,
    generation_disagreement,
    heuristic_complexity,
    ie_metrics,
    mcq_uncertainties,
    minmax,
    parse_ie_output,
    read_conll,
    select_active_prompt,
    select_apie,
    select_cams,
    sentence_f1,
    top_k,
)

ROOT = Path(__file__).resolve().parents[1]
GOOD = '```json\n{"entities": [{"type": "person", "text": "Ann"}]}\n```'
OTHER = '```json\n{"entities": [{"type": "location", "text": "Paris"}]}\n```'


def _parse(texts):
    out = []
    for t in texts:
        try:
            out.append(parse_ie_output(t))
        except ValueError:
            out.append(None)
    return out


def test_parse_ie_output_requires_fence_json_and_schema():
    assert parse_ie_output(GOOD) == frozenset({("person", "Ann")})
    for bad in [
        '{"entities": []}',  # no fence
        '```json\n{"entities": [{"type": "person", "text": "Ann"}\n```',  # malformed JSON
        '```json\n{"entities": [{"type": "animal", "text": "cat"}]}\n```',  # type outside the schema
        '```json\n{"ents": []}\n```',
    ]:  # missing key
        with pytest.raises(ValueError):
            parse_ie_output(bad)


def test_malformed_json_raises_format_uncertainty():
    assert format_uncertainty(_parse([GOOD, GOOD, GOOD])) == 0.0
    assert format_uncertainty(_parse([GOOD, '```json\n{"entities": [\n```', "no json"])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        format_uncertainty([])


def test_disagreeing_entity_sets_raise_content_uncertainty():
    agree = content_uncertainty(_parse([GOOD, GOOD, GOOD]))
    disagree = content_uncertainty(_parse([GOOD, OTHER, GOOD]))
    assert agree == pytest.approx(-1 / 3)  # J = 1, divided by 3 components as the paper's code
    assert disagree == pytest.approx(0.0)  # ∩ empty → J = 0
    assert disagree > agree
    # {a,b} and {a}: J = 1/2 → U_c = -1/6 ; no valid sample → J = 0 ; empty union → J = 1
    assert content_uncertainty([{("p", "a"), ("p", "b")}, {("p", "a")}]) == pytest.approx(-1 / 6)
    assert content_uncertainty([None, None]) == 0.0
    assert content_uncertainty([frozenset(), frozenset()]) == pytest.approx(-1 / 3)
    assert content_uncertainty([{("p", "a")}, {("p", "b")}], n_components=1) == 0.0


def test_identical_outputs_give_zero_disagreement():
    assert generation_disagreement([GOOD, GOOD, GOOD]) == 0.0
    # "abc" vs "abd": 1, "abc" vs "xyz": 3, "abd" vs "xyz": 3 → mean 7/3
    assert generation_disagreement(["abc", "abd", "xyz"]) == pytest.approx(7 / 3)


def test_minmax_and_weighted_combination():
    assert minmax([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert minmax([5.0, 5.0]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        minmax([])
    # u_d → [0, 1, .5], u_f → [1, 0, 0], u_c → [0, 0, 1]
    total = combine_uncertainties([2, 4, 3], [1, 0, 0], [-1, -1, 0], alpha=0.5, beta=0.25, gamma=0.25)
    assert total.tolist() == pytest.approx([0.25, 0.5, 0.5])
    with pytest.raises(ValueError):
        combine_uncertainties([1], [1, 2], [1])


def test_top_k_is_descending_and_stable():
    assert top_k([0.1, 0.9, 0.5, 0.9], 3) == [1, 3, 2]
    with pytest.raises(ValueError):
        top_k([1.0], 2)


def test_bio_to_entities_and_conll(tmp_path):
    tokens = ["Ann", "lives", "in", "New", "York", "City", "with", "Bob"]
    tags = ["B-person", "O", "O", "B-location", "I-location", "I-location", "O", "I-person"]
    assert bio_to_entities(tokens, tags) == [("person", "Ann"), ("location", "New York City"), ("person", "Bob")]
    with pytest.raises(ValueError):
        bio_to_entities(["a"], [])
    path = tmp_path / "x.conll"
    path.write_text("Ann\tB-person\nsings\tO\n\nHi\tO\n")
    sents = read_conll(str(path))
    assert [s["entities"] for s in sents] == [[("person", "Ann")], []]
    assert parse_ie_output(format_ie_answer(sents[0]["entities"])) == {("person", "Ann")}


def test_f1_metrics_by_hand():
    gold = [frozenset({("person", "Ann"), ("location", "Paris")}), frozenset(), frozenset({("person", "Bob")})]
    preds = [frozenset({("person", "Ann")}), frozenset(), None]
    assert sentence_f1(preds[0], gold[0]) == pytest.approx(2 / 3)  # 2·1 / (2 + 0 + 1)
    assert sentence_f1(frozenset(), frozenset()) == 1.0
    m = ie_metrics(preds, gold)
    assert m["f1_sentence"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # micro: TP 1, FP 0, FN 2 → P 1, R 1/3, F1 0.5
    assert m["micro_f1"] == pytest.approx(0.5)
    assert m["format_failure_rate"] == pytest.approx(1 / 3)


def test_cells_and_exact_quotas():
    u = [0.2, 0.8, 0.6, 0.4, 1.0, 0.2, 0.6, 0.4]
    c = [1, 2, 3, 4, 5, 6, 7, 8]  # median 4.5: high = items 4..7
    cells = difficulty_cells(u, c)
    assert cells == {"hard_high": [4, 6], "hard_low": [1, 2], "easy_high": [5, 7], "easy_low": [0, 3]}
    for seed in range(5):
        chosen = select_cams(u, c, per_cell=2, seed=seed)
        assert sorted(chosen) == list(range(8))
        one = select_cams(u, c, per_cell=1, seed=seed)
        assert len(one) == 4 and all(sum(i in cell for i in one) == 1 for cell in cells.values())
    with pytest.raises(ValueError):
        balanced_sample(cells, 3, fill=False)
    filled = balanced_sample({"hard_high": [0], "hard_low": [1, 2, 3], "easy_high": [4, 5], "easy_low": [6, 7]}, 2)
    assert len(filled) == 8 and len(set(filled)) == 8


def test_complexity_and_active_prompt():
    p = {"question": "one two", "hint": "three", "choices": ["a", "b", "c"], "solution": "First. Second."}
    assert heuristic_complexity(p) == 2 + 1 + 3 + 20 + 5
    assert select_active_prompt([0.2, 1.0, 0.6], 2) == [1, 2]


class FakeGenerator(Generator):
    """Returns scripted completions: for prompt i, `script[i]` (cycled through the n samples)."""

    backend_name = "fake"

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params.n))
        outs = []
        for i, _ in enumerate(prompts):
            texts = self.script[i % len(self.script)]
            outs.append(GenerationOutput("", [Completion(texts[j % len(texts)], [], "stop") for j in range(params.n)]))
        return outs


def test_select_apie_ranks_confused_items_first():
    pool = [{"text": f"t{i}", "entities": []} for i in range(4)]
    script = [
        [GOOD, GOOD, GOOD],  # certain
        ["garbage", "more garbage!", GOOD],  # format-confused
        [GOOD, OTHER, GOOD],  # content-confused
        [GOOD, GOOD, GOOD],
    ]
    gen = FakeGenerator(script)
    sel = select_apie(gen, pool, SamplingParams(n=3, temperature=0.8), k_shot=2)
    assert gen.calls == [(4, 3)]  # one batched call over the n-sample primitive
    assert sel.scores["u_f"] == pytest.approx([0, 2 / 3, 0, 0])
    assert set(sel.indices) == {1, 2}
    act = select_apie(gen, pool, SamplingParams(n=3, temperature=0.8), k_shot=1, mode="actprompt")
    assert act.indices == [1]
    with pytest.raises(ValueError):
        select_apie(gen, pool[:2], SamplingParams(n=3), k_shot=1)


def test_mcq_uncertainties_unique_answer_ratio():
    problems = [{"choices": ["x", "y"]}, {"choices": ["x", "y", "z"]}]
    gen = FakeGenerator([["A", "A", "A", "A"], ["A", "B", "C", "nothing"]])
    u = mcq_uncertainties(gen, ["p0", "p1"], problems, SamplingParams(n=4, temperature=0.7))
    assert u == [0.25, 0.75]


def test_scienceqa_split_is_disjoint():
    split = json.loads((ROOT / "recipes/active_prompting/scienceqa_split.json").read_text())
    assert len(split["pool"]) == 200 and len(split["eval"]) == 300
    assert not set(split["pool"]) & set(split["eval"])
    assert len(set(split["pool"])) == len(split["pool"]) and len(set(split["eval"])) == len(split["eval"])


def test_recipe_runs_end_to_end_with_fake_generator(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ap_run", ROOT / "recipes/active_prompting/run.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "ap_run", mod)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "build_generator", lambda *a, **k: FakeGenerator([[GOOD, OTHER, "x"], ["(A)", "B"]]))
    data = tmp_path / "w.conll"
    data.write_text("".join(f"Ann\tB-person\nw{i}\tO\n\n" for i in range(12)))
    res = mod.main(
        [
            "--config",
            str(ROOT / "recipes/active_prompting/configs/tiny_cpu.yaml"),
            "--run.output_dir",
            str(tmp_path / "out"),
            "--apie.data_path",
            str(data),
            "--run.experiments",
            "[apie]",
        ]
    )
    assert set(res["apie"]) >= {"zero_shot", "random", "actprompt", "apie"}
    # greedy evaluation takes the first scripted text: GOOD for even prompts, "(A)" (no JSON) for odd ones
    assert np.isclose(res["apie"]["zero_shot"]["format_failure_rate"], 0.5)
    assert (tmp_path / "out/report.md").read_text().startswith("| WNUT-17")
