"""The shared n-sample primitive: n completions per prompt, a parse status per sample, disagreement measures.

Used by active prompting (APIE, CAMS), curriculum selection and H-GIVR. The measures are pure functions:

* unique-answer ratio: distinct parsed answers / n (unparsed samples count in n, not as answers);
* mean pairwise Jaccard similarity of answer sets (two empty sets are identical: 1);
* mean pairwise normalised edit distance of the raw texts (Levenshtein / longer length);
* embedding variance: mean squared distance of the sample embeddings to their centroid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from llmkit.generation.types import Generator, Prompt, SamplingParams


def unique_answer_ratio(answers: Sequence[Hashable | None]) -> float:
    """Distinct parsed answers divided by the number of samples."""
    if not answers:
        raise ValueError("no samples")
    return len({a for a in answers if a is not None}) / len(answers)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; 1 for two empty sets."""
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def mean_pairwise_jaccard(sets: Sequence[set]) -> float:
    """Mean Jaccard similarity over all pairs (1 for fewer than two sets)."""
    pairs = list(combinations(sets, 2))
    return 1.0 if not pairs else float(np.mean([jaccard(a, b) for a, b in pairs]))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), O(len(a)·len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def mean_pairwise_edit_distance(texts: Sequence[str]) -> float:
    """Mean over pairs of edit distance / the longer text's length (0 for identical texts)."""
    pairs = list(combinations(texts, 2))
    if not pairs:
        return 0.0
    return float(np.mean([edit_distance(a, b) / max(len(a), len(b), 1) for a, b in pairs]))


def embedding_variance(embeddings: np.ndarray) -> float:
    """Mean squared Euclidean distance of the rows to their mean (the trace of the covariance)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError("expected a non-empty (n, d) array")
    return float(((embeddings - embeddings.mean(0)) ** 2).sum(1).mean())


@dataclass
class SampleSet:
    """The n samples of one prompt, what each parsed to (None: failed), and the disagreement measures."""

    texts: list[str]
    parsed: list[Any]
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def parse_ok(self) -> list[bool]:
        """Per sample: did it parse."""
        return [p is not None for p in self.parsed]


def disagreement(
    texts: Sequence[str], parsed: Sequence[Any], embed: Callable[[list[str]], np.ndarray] | None = None
) -> dict[str, float]:
    """All measures for one prompt's samples. Set Jaccard applies when answers parse to sets."""
    measures = {
        "parse_failure_rate": sum(p is None for p in parsed) / len(parsed),
        "edit_distance": mean_pairwise_edit_distance(list(texts)),
    }
    hashable = [p if p is None or isinstance(p, Hashable) else None for p in parsed]
    if not any(isinstance(p, (set, frozenset)) for p in parsed):
        measures["unique_answer_ratio"] = unique_answer_ratio(hashable)
    valid_sets = [set(p) for p in parsed if isinstance(p, (set, frozenset))]
    if valid_sets:
        measures["set_jaccard"] = mean_pairwise_jaccard(valid_sets)
    if embed is not None:
        measures["embedding_variance"] = embedding_variance(embed(list(texts)))
    return measures


def sample_n(
    generator: Generator,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    parse: Callable[[str], Any],
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> list[SampleSet]:
    """Generate `params.n` samples per prompt through any backend, parse each, and measure disagreement."""
    outputs = generator.generate(prompts, params)
    sets = []
    for output in outputs:
        texts = [c.text for c in output.completions]
        parsed = []
        for text in texts:
            try:
                parsed.append(parse(text))
            except (ValueError, KeyError, TypeError):
                parsed.append(None)
        sets.append(SampleSet(texts, parsed, disagreement(texts, parsed, embed)))
    return sets
