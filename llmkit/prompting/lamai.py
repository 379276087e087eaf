"""LaMAI — Language Model with Active Inquiry (docs/methods/lamai.md; arXiv 2402.03719, no public code).

Pure building blocks and the inquiry loop, on the shared n-sample primitive and the generation interface
(any backend: hf, vllm, openai).

1. Uncertainty gate. T answers are sampled; each is embedded (MiniLM by default, unit-normalised) and the
   uncertainty is `embedding_variance` of the shared primitive: the mean squared Euclidean distance of the T
   unit vectors to their centroid (= the trace of their covariance; 0 when all agree, at most 1). [UNVERIFIED
   in the paper: "variance of the embeddings"; this definition is ours.] The model answers directly when
   u <= threshold. The threshold is chosen on a validation split by `choose_threshold`:
   rule `accuracy` takes the cut that best separates wrong from right answers ("ask" ⇔ u > t predicts an
   error; ties go to the largest t, i.e. the fewest questions); rule `ask_rate` takes the quantile that makes
   a target share of the validation items ask. [UNVERIFIED: the paper gives no value.]
2. Active inquiry. The model proposes candidate clarifying questions (n samples of one prompt). Each candidate
   gets an active-learning score  w_info · informativeness + w_rep · representativeness  [UNVERIFIED formula]:
   * informativeness = u_now − mean over S hypothetical replies of u after appending (question, reply); the
     replies are imagined by the answering model, which does not see the hidden context;
   * representativeness: `density` (mean cosine similarity of the candidate to the other candidates: a
     question typical of what the model wants to know) or `diversity` (1 − density: the question least like
     the others). Both are over the candidates' unit embeddings.
   The highest score wins (ties: the first candidate).
3. The simulated user sees the hidden context and answers the chosen question (an LLM user, or the
   rule-based `SentenceOracle`). The loop appends (question, reply) and re-checks the gate, up to
   `max_rounds` questions [UNVERIFIED limit], then answers greedily.

Task with withheld context: ScienceQA text-only problems with a hint; the hint is hidden from the answerer and
shown to the simulated user; answers are scored by the harness's `scienceqa_verdict`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from llmkit.evaluation.tasks.scienceqa import INSTRUCTION, qcm_prompt, scienceqa_verdict
from llmkit.generation.sampling import embedding_variance
from llmkit.generation.types import Generator, Prompt, SamplingParams

Embed = Callable[[list[str]], np.ndarray]


# ---------------------------------------------------------------- pure functions


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norms == 0, 1.0, norms)


def answer_uncertainty(embeddings: np.ndarray) -> float:
    """LaMAI's uncertainty: mean squared distance of the unit-normalised answer embeddings to their centroid."""
    return embedding_variance(unit_rows(embeddings))


def choose_threshold(
    uncertainties: Sequence[float], errors: Sequence[bool], rule: str = "accuracy", target_ask_rate: float = 0.5
) -> float:
    """The gate threshold t (ask ⇔ u > t) from validation uncertainties and whether each direct answer was wrong.

    `accuracy`: among t = −inf (always ask), each distinct u (ask above it), the t maximising the share of items
    where (u > t) == error; ties → the largest t (fewest questions). `ask_rate`: the largest distinct u (or
    −inf) such that the share of items with u > t is at least `target_ask_rate`.
    """
    u = np.asarray(uncertainties, dtype=np.float64)
    err = np.asarray(errors, dtype=bool)
    if len(u) == 0 or len(u) != len(err):
        raise ValueError("need one error flag per uncertainty, and at least one item")
    candidates = [-np.inf] + sorted(set(u.tolist()))
    if rule == "accuracy":
        best, best_acc = candidates[0], -1.0
        for t in candidates:
            acc = float(np.mean((u > t) == err))
            if acc >= best_acc:
                best, best_acc = t, acc
        return float(best)
    if rule == "ask_rate":
        if not 0.0 <= target_ask_rate <= 1.0:
            raise ValueError(f"target_ask_rate must be in [0, 1], got {target_ask_rate}")
        ok = [t for t in candidates if np.mean(u > t) >= target_ask_rate]
        return float(max(ok))
    raise ValueError(f"unknown threshold rule {rule!r}; use accuracy or ask_rate")


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for positive `labels` (Mann–Whitney; ties count 1/2); NaN with one class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def informativeness(current: float, after_replies: Sequence[float]) -> float:
    """Expected drop in answer uncertainty: current − mean of the uncertainties after each simulated reply."""
    if len(after_replies) == 0:
        raise ValueError("need at least one simulated reply")
    return float(current - np.mean(after_replies))


def representativeness(candidate_embeddings: np.ndarray, mode: str = "density") -> np.ndarray:
    """Per candidate: `density` = mean cosine similarity to the other candidates; `diversity` = 1 − density.

    One candidate alone gets density 1 (nothing to differ from)."""
    e = unit_rows(candidate_embeddings)
    n = len(e)
    if n == 0:
        raise ValueError("no candidates")
    if n == 1:
        density = np.ones(1)
    else:
        sim = e @ e.T
        density = (sim.sum(1) - np.diag(sim)) / (n - 1)
    if mode == "density":
        return density
    if mode == "diversity":
        return 1.0 - density
    raise ValueError(f"unknown representativeness mode {mode!r}; use density or diversity")


def select_question(
    info: Sequence[float], rep: Sequence[float], w_info: float, w_rep: float
) -> tuple[int, list[float]]:
    """Index of the best candidate by w_info · info + w_rep · rep (ties: the first), and all scores."""
    if len(info) != len(rep) or len(info) == 0:
        raise ValueError("need one informativeness and one representativeness value per candidate")
    scores = [w_info * float(i) + w_rep * float(r) for i, r in zip(info, rep)]
    return int(np.argmax(scores)), scores


def clean_question(text: str) -> str:
    """The first line of a generated question, stripped of a leading 'Question:'/'Q:' label."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "").strip()
    return re.sub(r"^(question|q)\s*[:.-]\s*", "", line, flags=re.IGNORECASE).strip()


# ---------------------------------------------------------------- the withheld-context ScienceQA task


def withheld(problem: dict[str, Any]) -> dict[str, Any]:
    """The problem as the answerer sees it: no hint (and no caption)."""
    return {**problem, "hint": "", "caption": ""}


def dialogue_text(dialogue: Sequence[tuple[str, str]]) -> str:
    """The clarifications so far, one Q/A pair per two lines."""
    return "".join(f"Clarifying question: {q}\nUser's reply: {r}\n" for q, r in dialogue)


def answer_prompt(problem: dict[str, Any], dialogue: Sequence[tuple[str, str]]) -> Prompt:
    """The answering prompt: QCM without the hint, then the clarifications, then ScienceQA's instruction."""
    return [
        {
            "role": "user",
            "content": qcm_prompt(withheld(problem), use_caption=False) + dialogue_text(dialogue) + INSTRUCTION,
        }
    ]


def context_prompt(problem: dict[str, Any]) -> Prompt:
    """The oracle upper bound: the harness's ScienceQA chat prompt with the hint given."""
    return [{"role": "user", "content": qcm_prompt(problem, use_caption=False) + INSTRUCTION}]


def question_prompt(problem: dict[str, Any], dialogue: Sequence[tuple[str, str]]) -> Prompt:
    """Ask the model for one clarifying question about the missing context."""
    return [
        {
            "role": "user",
            "content": (
                "You must answer the problem below, but some background context is missing.\n"
                + qcm_prompt(withheld(problem), use_caption=False)
                + dialogue_text(dialogue)
                + "Ask the user ONE short question whose answer would help you choose the right option. "
                "Write only the question."
            ),
        }
    ]


def hypothetical_reply_prompt(problem: dict[str, Any], dialogue: Sequence[tuple[str, str]], question: str) -> Prompt:
    """The answering model imagines a user's reply (it does not see the hidden context)."""
    return [
        {
            "role": "user",
            "content": (
                qcm_prompt(withheld(problem), use_caption=False)
                + dialogue_text(dialogue)
                + f"Someone who knows the missing context is asked: {question}\nWrite their short reply (one sentence)."
            ),
        }
    ]


def user_prompt(hidden: str, question: str) -> Prompt:
    """The simulated user's prompt: the hidden context, and the question to answer from it."""
    return [
        {
            "role": "user",
            "content": (
                f"Context: {hidden}\nUsing only this context, answer the question in one short sentence.\n"
                f"Question: {question}"
            ),
        }
    ]


class SimulatedUser(Protocol):
    """Answers clarifying questions from the hidden context of each problem."""

    def reply(self, problems: Sequence[dict[str, Any]], questions: Sequence[str]) -> list[str]: ...


class SentenceOracle:
    """Rule-based user: the hint sentence sharing the most words (≥ 3 letters) with the question; the first on ties."""

    def reply(self, problems, questions):
        out = []
        for p, q in zip(problems, questions):
            sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", p.get("hint") or "") if s.strip()]
            if not sentences:
                out.append("I don't know.")
                continue
            words = set(re.findall(r"[a-z]{3,}", q.lower()))
            overlap = [len(words & set(re.findall(r"[a-z]{3,}", s.lower()))) for s in sentences]
            out.append(sentences[int(np.argmax(overlap))])
        return out


class LLMUser:
    """A model (a second one, or the answerer itself) that sees the hint and answers the question greedily."""

    def __init__(self, generator: Generator, max_new_tokens: int = 48):
        self.generator = generator
        self.params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=["\n"])

    def reply(self, problems, questions):
        outs = self.generator.generate(
            [user_prompt(p.get("hint") or "", q) for p, q in zip(problems, questions)], self.params
        )
        return [o.completions[0].text.strip() or "I don't know." for o in outs]


# ---------------------------------------------------------------- the loop


@dataclass
class InquiryConfig:
    """The loop's knobs; every UNVERIFIED detail of docs/methods/lamai.md is one of these."""

    samples: int = 5  # T answers for the uncertainty
    temperature: float = 0.7
    answer_tokens: int = 16
    threshold: float = 0.0  # ask while u > threshold
    max_rounds: int = 2  # questions at most per item
    candidates: int = 4  # clarifying questions proposed per round (duplicates dropped)
    question_temperature: float = 0.8
    question_tokens: int = 32
    sim_replies: int = 1  # hypothetical replies per candidate (informativeness)
    reply_tokens: int = 32
    w_info: float = 1.0
    w_rep: float = 0.0
    rep_mode: str = "density"
    selection: str = "lamai"  # lamai | random | first
    seed: int = 0


def sample_uncertainty(
    generator: Generator, prompts: Sequence[Prompt], s: InquiryConfig, embed: Embed, seed: int
) -> tuple[list[float], list[list[str]]]:
    """T samples per prompt (the n-sample primitive's generator call) → uncertainty and the texts."""
    if not prompts:
        return [], []
    outs = generator.generate(
        list(prompts), SamplingParams(n=s.samples, temperature=s.temperature, max_new_tokens=s.answer_tokens, seed=seed)
    )
    texts = [[c.text.strip() for c in o.completions] for o in outs]
    flat = [t or "(empty)" for ts in texts for t in ts]
    vectors = embed(flat) if flat else np.zeros((0, 1))
    u = [answer_uncertainty(vectors[i * s.samples : (i + 1) * s.samples]) for i in range(len(texts))]
    return u, texts


def greedy_answers(generator: Generator, prompts: Sequence[Prompt], tokens: int) -> list[str]:
    """One greedy answer per prompt."""
    outs = generator.generate(list(prompts), SamplingParams(temperature=0.0, max_new_tokens=tokens))
    return [o.completions[0].text for o in outs]


def propose_questions(generator: Generator, problems, dialogues, s: InquiryConfig, seed: int) -> list[list[str]]:
    """Candidate clarifying questions per problem (n samples, cleaned, duplicates and empties dropped)."""
    outs = generator.generate(
        [question_prompt(p, d) for p, d in zip(problems, dialogues)],
        SamplingParams(n=s.candidates, temperature=s.question_temperature, max_new_tokens=s.question_tokens, seed=seed),
    )
    result = []
    for o in outs:
        seen: list[str] = []
        for c in o.completions:
            q = clean_question(c.text)
            if q and q.lower() not in {x.lower() for x in seen}:
                seen.append(q)
        result.append(seen or ["What context is missing from this problem?"])
    return result


def score_candidates(
    generator: Generator,
    problem,
    dialogue,
    u_now: float,
    questions: list[str],
    s: InquiryConfig,
    embed: Embed,
    seed: int,
) -> dict[str, Any]:
    """LaMAI's active-learning score of each candidate: imagined replies → new uncertainty → informativeness;
    candidate embeddings → representativeness."""
    replies = generator.generate(
        [hypothetical_reply_prompt(problem, dialogue, q) for q in questions],
        SamplingParams(
            n=s.sim_replies, temperature=s.question_temperature, max_new_tokens=s.reply_tokens, stop=["\n"], seed=seed
        ),
    )
    hyp = [[c.text.strip() or "I don't know." for c in r.completions] for r in replies]
    prompts = [answer_prompt(problem, list(dialogue) + [(q, r)]) for q, rs in zip(questions, hyp) for r in rs]
    after, _ = sample_uncertainty(generator, prompts, s, embed, seed + 1)
    info = [informativeness(u_now, after[i * s.sim_replies : (i + 1) * s.sim_replies]) for i in range(len(questions))]
    rep = representativeness(embed(questions), s.rep_mode).tolist()
    best, scores = select_question(info, rep, s.w_info, s.w_rep)
    return {
        "best": best,
        "informativeness": info,
        "representativeness": rep,
        "scores": scores,
        "hypothetical_replies": hyp,
    }


def run_inquiry(
    generator: Generator,
    problems: Sequence[dict[str, Any]],
    s: InquiryConfig,
    embed: Embed,
    user: SimulatedUser,
    initial: tuple[list[float], list[list[str]]] | None = None,
) -> list[dict[str, Any]]:
    """The LaMAI loop over `problems` (batched across the items still asking). One record per problem:
    dialogue, uncertainty per round, candidates and their scores, final answer and verdict.

    `initial` (round-0 uncertainties and samples) can be shared between runs that differ only in selection.
    """
    if s.selection not in ("lamai", "random", "first"):
        raise ValueError(f"unknown selection {s.selection!r}; use lamai, random or first")
    rng = random.Random(s.seed)
    n = len(problems)
    dialogues: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    records: list[dict[str, Any]] = [{"id": p.get("id", p.get("pid")), "rounds": []} for p in problems]
    u, samples = (
        initial
        if initial is not None
        else sample_uncertainty(generator, [answer_prompt(p, []) for p in problems], s, embed, s.seed)
    )
    u, samples = list(u), list(samples)
    for i in range(n):
        records[i]["uncertainty"] = [u[i]]
        records[i]["initial_samples"] = samples[i]
    for rnd in range(s.max_rounds):
        active = [i for i in range(n) if u[i] > s.threshold]
        if not active:
            break
        seed = s.seed + 1000 * (rnd + 1)
        cands = propose_questions(generator, [problems[i] for i in active], [dialogues[i] for i in active], s, seed)
        chosen = []
        for i, qs in zip(active, cands):
            info: dict[str, Any] = {"candidates": qs}
            if s.selection == "lamai" and len(qs) > 1:
                info.update(score_candidates(generator, problems[i], dialogues[i], u[i], qs, s, embed, seed + 7))
            elif s.selection == "random":
                info["best"] = rng.randrange(len(qs))
            else:
                info["best"] = 0
            chosen.append(qs[info["best"]])
            records[i]["rounds"].append(info)
        replies = user.reply([problems[i] for i in active], chosen)
        for i, q, r in zip(active, chosen, replies):
            dialogues[i].append((q, r))
            records[i]["rounds"][-1].update({"question": q, "reply": r})
        new_u, _ = sample_uncertainty(
            generator, [answer_prompt(problems[i], dialogues[i]) for i in active], s, embed, seed + 13
        )
        for i, v in zip(active, new_u):
            u[i] = v
            records[i]["uncertainty"].append(v)
    finals = greedy_answers(generator, [answer_prompt(p, d) for p, d in zip(problems, dialogues)], s.answer_tokens)
    for rec, p, d, text in zip(records, problems, dialogues, finals):
        rec.update(
            {
                "dialogue": [{"question": q, "reply": r} for q, r in d],
                "questions_asked": len(d),
                "answer": text,
                **scienceqa_verdict(text, p),
            }
        )
    return records


class CachedEmbedder:
    """A sentence-transformers model loaded once (MiniLM from its wheel by default), unit-normalised rows."""

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        from llmkit.data.embeddings import resolve_embedder

        self.model = SentenceTransformer(resolve_embedder(model_name), device="cpu")
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            vecs = self.model.encode(
                todo,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            self.cache.update(zip(todo, vecs.astype(np.float32)))
        return np.stack([self.cache[t] for t in texts])


__all__ = [
    "CachedEmbedder",
    "InquiryConfig",
    "LLMUser",
    "SentenceOracle",
    "answer_prompt",
    "answer_uncertainty",
    "auroc",
    "choose_threshold",
    "context_prompt",
    "informativeness",
    "representativeness",
    "run_inquiry",
    "select_question",
]
