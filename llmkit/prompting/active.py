"""Active prompting: APIE (introspective confusion for IE) and CAMS (difficulty × complexity balanced exemplars).

Both selectors are functions over the shared n-sample primitive (`llmkit.generation.sampling.sample_n`), so
they run on any generation backend (hf, vllm, openai). The method logic is small pure functions:

APIE (docs/methods/apie.md, arXiv 2508.10036): per pool item, k samples → format uncertainty U_f (share of samples
failing fenced-JSON / json / schema), content uncertainty U_c (−Jaccard of the valid samples' tuple sets,
divided by 3 components as the paper's code), generation disagreement U_d (mean pairwise edit distance);
each min-max normalised over the pool; U_t = α·U_d + β·U_f + γ·U_c; the top-K form one fixed exemplar set.

CAMS (docs/methods/cams.md, arXiv 2508.18673): difficulty = unique-answer ratio over k samples (hard if > 0.5),
intrinsic complexity from a pluggable scorer (default `heuristic_complexity`, model-free), median split, and
an equal number of exemplars from each of the four cells.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Hashable, Sequence

import numpy as np

from llmkit.generation.sampling import SampleSet, edit_distance, sample_n, unique_answer_ratio
from llmkit.generation.types import Generator, Prompt, SamplingParams

# ---------------------------------------------------------------------------------------------- IE parsing

WNUT_TYPES = ["person", "location", "corporation", "product", "creative-work", "group"]
_FENCE = re.compile(r"```json\s*(.*?)```", re.DOTALL)


def entity_schema(types: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of an NER answer: {"entities": [{"type": <one of types>, "text": str}]}."""
    if not types:
        raise ValueError("entity_schema needs at least one entity type")
    return {
        "type": "object",
        "required": ["entities"],
        "properties": {
            "entities": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "text"],
                    "properties": {"type": {"enum": list(types)}, "text": {"type": "string"}},
                },
            }
        },
    }


def _validate(obj: Any, types: Sequence[str]) -> None:
    """Validate `obj` against `entity_schema(types)` (jsonschema when installed; the same rules by hand)."""
    try:
        import jsonschema
    except ImportError:  # the same rules by hand
        jsonschema = None
    if jsonschema is not None:
        try:
            jsonschema.validate(obj, entity_schema(types))
        except jsonschema.ValidationError as err:
            raise ValueError(f"schema: {err.message}") from None
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("entities"), list):
        raise ValueError("schema: need an object with an 'entities' list")
    for ent in obj["entities"]:
        if not isinstance(ent, dict) or ent.get("type") not in types or not isinstance(ent.get("text"), str):
            raise ValueError(f"schema: bad entity {ent!r}")


def parse_ie_output(text: str, types: Sequence[str] = WNUT_TYPES) -> frozenset[tuple[str, str]]:
    """Parse a response as the paper's code does: a fenced ```json block, then json.loads, then schema validation.

    Returns the canonical entity tuples {(type, text)} (text whitespace-normalised); raises ValueError on any
    failure (no fence, bad JSON, schema violation), which `sample_n` records as a failed sample.
    """
    match = _FENCE.search(text)
    if match is None:
        raise ValueError("no fenced ```json block")
    try:
        obj = json.loads(match.group(1))
    except json.JSONDecodeError as err:
        raise ValueError(f"json: {err}") from None
    _validate(obj, types)
    return frozenset((e["type"], " ".join(e["text"].split())) for e in obj["entities"])


def format_ie_answer(entities: Sequence[tuple[str, str]]) -> str:
    """The gold answer written as the model should answer: a fenced JSON block."""
    body = json.dumps({"entities": [{"type": t, "text": s} for t, s in entities]}, ensure_ascii=False)
    return f"```json\n{body}\n```"


# ---------------------------------------------------------------------------------------------- BIO, F1


def read_conll(path: str) -> list[dict[str, Any]]:
    """Sentences from a CoNLL file (token<TAB>tag per line, blank line between sentences)."""
    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    for i, s in enumerate(sentences):
        s["id"] = i
        s["text"] = " ".join(s["tokens"])
        s["entities"] = bio_to_entities(s["tokens"], s["tags"])
    return sentences


def bio_to_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """BIO tags → (type, text) tuples in order; an I- without a matching open span starts a new span (conlleval)."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    spans, cur_type, cur = [], None, []
    for token, tag in zip(tokens, tags):
        if tag == "O" or tag.startswith("B-") or (tag.startswith("I-") and tag[2:] != cur_type):
            if cur:
                spans.append((cur_type, " ".join(cur)))
            cur_type, cur = (None, []) if tag == "O" else (tag[2:], [token])
        elif tag.startswith("I-"):
            cur.append(token)
        else:
            raise ValueError(f"bad BIO tag {tag!r}")
    if cur:
        spans.append((cur_type, " ".join(cur)))
    return spans


def sentence_f1(pred: set | frozenset | None, gold: set | frozenset) -> float:
    """Per-sentence F1 = 2TP / (2TP + FP + FN) on exact tuples; unparsed (None) = 0; empty gold and prediction = 1."""
    if pred is None:
        return 0.0
    tp = len(pred & gold)
    denom = 2 * tp + len(pred - gold) + len(gold - pred)
    return 1.0 if denom == 0 else 2 * tp / denom


def ie_metrics(preds: Sequence[set | frozenset | None], golds: Sequence[set | frozenset]) -> dict[str, float]:
    """Per-sentence F1 averaged (the paper's metric), micro P/R/F1 over all tuples (unparsed = no prediction),
    format-failure rate."""
    if len(preds) != len(golds) or not preds:
        raise ValueError(f"need equal non-empty prediction/gold lists, got {len(preds)} and {len(golds)}")
    tp = fp = fn = 0
    for p, g in zip(preds, golds):
        p = p or frozenset()
        tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "f1_sentence": float(np.mean([sentence_f1(p, g) for p, g in zip(preds, golds)])),
        "micro_precision": precision,
        "micro_recall": recall,
        "micro_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "format_failure_rate": sum(p is None for p in preds) / len(preds),
    }


# ---------------------------------------------------------------------------------------------- APIE scores


def format_uncertainty(parsed: Sequence[Any]) -> float:
    """U_f = share of the k samples that failed parsing or validation (None)."""
    if not parsed:
        raise ValueError("no samples")
    return sum(p is None for p in parsed) / len(parsed)


def content_uncertainty(parsed: Sequence[Any], n_components: int = 3) -> float:
    """U_c = −(Jaccard of all valid tuple sets, |∩|/|∪|) / n_components (absent IE components count 0, as the code).

    J = 1 when the union is empty; J = 0 when no sample is valid. NER has one component, so J/3 as the paper's code.
    """
    if n_components < 1:
        raise ValueError("n_components must be >= 1")
    valid = [set(p) for p in parsed if p is not None]
    if not valid:
        j = 0.0
    else:
        union = set().union(*valid)
        j = 1.0 if not union else len(set.intersection(*valid)) / len(union)
    return -j / n_components


def generation_disagreement(texts: Sequence[str]) -> float:
    """U_d = mean pairwise character edit distance (raw Levenshtein, as NLTK's) over the k response strings."""
    pairs = list(combinations(texts, 2))
    return 0.0 if not pairs else float(np.mean([edit_distance(a, b) for a, b in pairs]))


def minmax(values: Sequence[float]) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant vector maps to zeros."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("minmax needs a non-empty 1-D sequence")
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def combine_uncertainties(
    u_d: Sequence[float],
    u_f: Sequence[float],
    u_c: Sequence[float],
    alpha: float = 0.33,
    beta: float = 0.33,
    gamma: float = 0.33,
) -> np.ndarray:
    """U_t = α·minmax(U_d) + β·minmax(U_f) + γ·minmax(U_c), over the pool."""
    if not (len(u_d) == len(u_f) == len(u_c)):
        raise ValueError(f"length mismatch: {len(u_d)}, {len(u_f)}, {len(u_c)}")
    return alpha * minmax(u_d) + beta * minmax(u_f) + gamma * minmax(u_c)


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores, descending; ties keep pool order (stable)."""
    if not 0 < k <= len(scores):
        raise ValueError(f"k must be in 1..{len(scores)}, got {k}")
    return [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]]


def apie_scores(sample_sets: Sequence[SampleSet]) -> dict[str, list[float]]:
    """Raw U_d, U_f, U_c per pool item from its SampleSet (parsed = tuple set or None)."""
    return {
        "u_d": [generation_disagreement(s.texts) for s in sample_sets],
        "u_f": [format_uncertainty(s.parsed) for s in sample_sets],
        "u_c": [content_uncertainty(s.parsed) for s in sample_sets],
    }


# ---------------------------------------------------------------------------------------------- IE prompts


def ie_instruction(types: Sequence[str] = WNUT_TYPES) -> str:
    """The schema-constrained NER instruction (JSON template + allowed types)."""
    return (
        "Extract the named entities from the text. Allowed entity types: " + ", ".join(types) + ".\n"
        "Answer only with a fenced JSON block of this form:\n"
        '```json\n{"entities": [{"type": "<type>", "text": "<entity text>"}]}\n```\n'
        'Use {"entities": []} when there is no entity.'
    )


def ie_prompt(
    text: str, exemplars: Sequence[dict[str, Any]], types: Sequence[str] = WNUT_TYPES
) -> list[dict[str, str]]:
    """Chat prompt: the instruction, the exemplars with their gold answers, then the text."""
    parts = [ie_instruction(types)]
    for ex in exemplars:
        parts.append(f"Text: {ex['text']}\nAnswer:\n{format_ie_answer(ex['entities'])}")
    parts.append(f"Text: {text}\nAnswer:")
    return [{"role": "user", "content": "\n\n".join(parts)}]


@dataclass
class Selection:
    """The chosen exemplar indices (into the pool) and per-pool-item scores."""

    indices: list[int]
    scores: dict[str, list[float]]


def select_apie(
    generator: Generator,
    pool: Sequence[dict[str, Any]],
    params: SamplingParams,
    k_shot: int = 3,
    alpha: float = 0.33,
    beta: float = 0.33,
    gamma: float = 0.33,
    probe_shots: int = 2,
    seed: int = 0,
    types: Sequence[str] = WNUT_TYPES,
    mode: str = "apie",
) -> Selection:
    """APIE over the n-sample primitive: probe each pool text (with `probe_shots` random pool exemplars, never itself)
    `params.n` times, score, and take the top-K. `mode="actprompt"` ranks by generation disagreement only."""
    if mode not in ("apie", "actprompt"):
        raise ValueError(f"mode must be 'apie' or 'actprompt', got {mode!r}")
    if len(pool) <= probe_shots:
        raise ValueError(f"pool of {len(pool)} is too small for {probe_shots} probe exemplars")
    rng = random.Random(seed)
    prompts: list[Prompt] = []
    for i, item in enumerate(pool):
        others = [j for j in range(len(pool)) if j != i]
        prompts.append(ie_prompt(item["text"], [pool[j] for j in rng.sample(others, probe_shots)], types))
    sets = sample_n(generator, prompts, params, lambda t: parse_ie_output(t, types))
    scores = apie_scores(sets)
    if mode == "actprompt":
        total = minmax(scores["u_d"])
    else:
        total = combine_uncertainties(scores["u_d"], scores["u_f"], scores["u_c"], alpha, beta, gamma)
    scores["u_t"] = [float(x) for x in total]
    return Selection(top_k(total, k_shot), scores)


# ---------------------------------------------------------------------------------------------- CAMS


def heuristic_complexity(problem: dict[str, Any]) -> float:
    """Default model-free complexity scorer (stand-in for DEITA's Evol-Complexity scorer on the text substitute).

    Score = words in question + context + options (the text substitute for the input), plus 10 per sentence of the
    gold rationale (`solution`, a proxy for the number of reasoning steps), plus 5 per option beyond two.
    """
    text = " ".join(
        [
            problem.get("question", ""),
            problem.get("hint") or "",
            problem.get("caption") or "",
            " ".join(problem.get("choices", [])),
        ]
    )
    steps = len([s for s in re.split(r"[.!?]\s", problem.get("solution") or "") if s.strip()])
    return float(len(text.split()) + 10 * steps + 5 * max(0, len(problem.get("choices", [])) - 2))


def difficulty_cells(
    uncertainty: Sequence[float], complexity: Sequence[float], threshold: float = 0.5
) -> dict[str, list[int]]:
    """Indices per cell: hard if uncertainty > threshold; high complexity if strictly above the median."""
    if len(uncertainty) != len(complexity) or not uncertainty:
        raise ValueError("need equal non-empty uncertainty and complexity lists")
    median = float(np.median(complexity))
    cells: dict[str, list[int]] = {"hard_high": [], "hard_low": [], "easy_high": [], "easy_low": []}
    for i, (u, c) in enumerate(zip(uncertainty, complexity)):
        cells[("hard" if u > threshold else "easy") + "_" + ("high" if c > median else "low")].append(i)
    return cells


def balanced_sample(cells: dict[str, list[int]], per_cell: int, seed: int = 0, fill: bool = True) -> list[int]:
    """Exactly `per_cell` indices from each of the four cells (random within a cell, seeded).

    A cell with too few items raises, unless `fill`: then the shortfall is taken from the remaining items
    of the other cells (most populous first) and the result still has 4·per_cell items.
    """
    if per_cell < 1:
        raise ValueError("per_cell must be >= 1")
    rng = random.Random(seed)
    chosen, short = [], 0
    for name in sorted(cells):
        items = list(cells[name])
        if len(items) < per_cell and not fill:
            raise ValueError(f"cell {name} has {len(items)} items, fewer than {per_cell}")
        take = rng.sample(items, min(per_cell, len(items)))
        short += per_cell - len(take)
        chosen.extend(take)
    if short:
        rest = [i for name in sorted(cells, key=lambda n: -len(cells[n])) for i in cells[name] if i not in chosen]
        if len(rest) < short:
            raise ValueError(f"pool too small for {4 * per_cell} exemplars")
        chosen.extend(rng.sample(rest, short))
    return chosen


def mcq_answer(text: str, choices: Sequence[str]) -> Hashable:
    """Parse a ScienceQA answer (the option index) with the harness's extractor; ValueError when none."""
    from llmkit.evaluation.tasks.scienceqa import extract_choice

    choice = extract_choice(text, list(choices))
    if choice is None:
        raise ValueError("no option found")
    return choice


def mcq_uncertainties(
    generator: Generator, prompts: Sequence[Prompt], problems: Sequence[dict[str, Any]], params: SamplingParams
) -> list[float]:
    """Active-Prompt uncertainty per problem: unique-answer ratio over `params.n` samples (one batched `sample_n`).

    Samples are parsed to an option letter (by the harness's extractor, letters only), then a letter beyond the
    problem's options counts as unparsed.
    """
    if len(prompts) != len(problems):
        raise ValueError(f"{len(prompts)} prompts but {len(problems)} problems")
    width = max(len(p["choices"]) for p in problems)
    sets = sample_n(generator, prompts, params, lambda t: mcq_answer(t, [""] * width))
    out = []
    for s, problem in zip(sets, problems):
        answers = [a if a is not None and a < len(problem["choices"]) else None for a in s.parsed]
        out.append(unique_answer_ratio(answers))
    return out


def select_cams(
    uncertainty: Sequence[float], complexity: Sequence[float], per_cell: int, seed: int = 0, threshold: float = 0.5
) -> list[int]:
    """CAMS: the four difficulty × complexity cells, `per_cell` exemplars from each."""
    return balanced_sample(difficulty_cells(uncertainty, complexity, threshold), per_cell, seed)


def select_active_prompt(uncertainty: Sequence[float], k: int) -> list[int]:
    """Active-Prompt baseline: the k most uncertain pool items."""
    return top_k(uncertainty, k)
