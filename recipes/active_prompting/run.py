"""Active prompting: APIE on WNUT-17 NER and CAMS on ScienceQA, each against its baselines.

    python recipes/active_prompting/run.py --config recipes/active_prompting/configs/tiny_cpu.yaml
    python recipes/active_prompting/run.py --config recipes/active_prompting/configs/smollm2_cpu.yaml --run.backend hf

Top to bottom: (1) build a generator on any backend (`llmkit.generation.build_generator`); (2) APIE: split the
WNUT-17 test sentences into a pool and a disjoint evaluation subset, probe the pool with k samples through the
shared n-sample primitive, score U_f/U_c/U_d, take the top-K as one fixed exemplar set; compare with zero-shot,
random K-shot (several seeds) and ActPrompt (edit disagreement only), greedy on the evaluation subset;
(3) CAMS: ScienceQA pool/eval ids from `scienceqa_split.json`; unique-answer ratio over k samples for each pool
problem, complexity from the default model-free scorer, one exemplar per cell per shot; compare with random
few-shot and Active-Prompt. Results: `<output_dir>/results.json` and `report.md` (written after every run).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.config import to_dict
from llmkit.data.loading import resolve_data_path
from llmkit.errors import exit_on_user_error
from llmkit.evaluation.tasks.scienceqa import LETTERS, ScienceQA, extract_choice, qcm_prompt
from llmkit.generation import SamplingParams, build_generator
from llmkit.prompting.active import (
    WNUT_TYPES,
    heuristic_complexity,
    ie_metrics,
    ie_prompt,
    mcq_uncertainties,
    parse_ie_output,
    read_conll,
    select_active_prompt,
    select_apie,
    select_cams,
)
from llmkit.recipe import parse_recipe_args, setup_logging
from llmkit.stats import mean_std

logger = logging.getLogger("recipes.active_prompting")
SPLIT_FILE = Path(__file__).with_name("scienceqa_split.json")


@dataclass
class RunConfig:
    """Model, backend, where results go, which experiments."""

    model: str = "tiny-random-llama"
    backend: str = "hf"
    batch_size: int = 8
    output_dir: str = "outputs/active-prompting"
    experiments: list[str] = field(default_factory=lambda: ["apie", "cams"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


@dataclass
class APIEConfig:
    """APIE settings (docs/methods/apie.md); defaults as the paper's run script (k=3, T=0.8, α=β=γ=0.33, K=3)."""

    data_path: str = "wnut17/emerging.test.annotated"
    pool_size: int = 100
    eval_size: int = 200
    k_samples: int = 3
    temperature: float = 0.8
    probe_shots: int = 2
    k_shot: int = 3
    alpha: float = 0.33
    beta: float = 0.33
    gamma: float = 0.33
    max_new_tokens: int = 96
    split_seed: int = 0


@dataclass
class CAMSConfig:
    """CAMS settings (docs/methods/cams.md): k samples → unique-answer ratio, hard if > threshold, per_cell per cell."""

    pool_size: int = 200
    eval_size: int = 300
    k_samples: int = 5
    temperature: float = 0.7
    threshold: float = 0.5
    per_cell: int = 1
    rationale_chars: int = 300


@dataclass
class ActivePromptingConfig:
    """run + apie + cams sections."""

    run: RunConfig = field(default_factory=RunConfig)
    apie: APIEConfig = field(default_factory=APIEConfig)
    cams: CAMSConfig = field(default_factory=CAMSConfig)


def mean_std_n(values: list[float]) -> dict[str, float]:
    """Mean and population std of a list (std 0 for one value), and how many values there are."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def evaluate_ie(generator, sentences, exemplars, max_new_tokens):
    """Greedy NER on `sentences` with a fixed exemplar set → metrics (per-sentence F1, micro F1, format failures)."""
    prompts = [ie_prompt(s["text"], exemplars) for s in sentences]
    outputs = generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    preds = []
    for o in outputs:
        try:
            preds.append(parse_ie_output(o.completions[0].text, WNUT_TYPES))
        except ValueError:
            preds.append(None)
    return ie_metrics(preds, [frozenset(s["entities"]) for s in sentences])


def run_apie(cfg: ActivePromptingConfig, generator, results, save):
    """APIE vs zero-shot / random / ActPrompt on a WNUT-17 test subset."""
    a = cfg.apie
    sentences = read_conll(str(resolve_data_path(a.data_path)))
    order = list(range(len(sentences)))
    random.Random(a.split_seed).shuffle(order)
    pool = [sentences[i] for i in order[: a.pool_size]]
    evalset = [sentences[i] for i in order[a.pool_size : a.pool_size + a.eval_size]]
    logger.info("APIE: %d sentences, pool %d, eval %d", len(sentences), len(pool), len(evalset))
    out = results.setdefault("apie", {"pool_ids": [s["id"] for s in pool], "eval_ids": [s["id"] for s in evalset]})
    probe = SamplingParams(n=a.k_samples, temperature=a.temperature, max_new_tokens=a.max_new_tokens, seed=a.split_seed)
    t0 = time.time()
    sel = select_apie(generator, pool, probe, a.k_shot, a.alpha, a.beta, a.gamma, a.probe_shots, a.split_seed)
    out["probe_seconds"] = time.time() - t0
    out["pool_scores"] = sel.scores
    out["pool_format_failure_rate"] = float(np.mean(sel.scores["u_f"]))
    # ActPrompt reuses the same probe samples: rank by normalised U_d alone
    u_d = np.asarray(sel.scores["u_d"])
    act_idx = [int(i) for i in np.argsort(-u_d, kind="stable")[: a.k_shot]]
    methods = {"zero_shot": [], "apie": sel.indices, "actprompt": act_idx}
    out["selected"] = {k: [pool[i]["id"] for i in v] for k, v in methods.items()}
    for name, idx in methods.items():
        out[name] = evaluate_ie(generator, evalset, [pool[i] for i in idx], a.max_new_tokens)
        logger.info("APIE %s: %s", name, out[name])
        save()
    runs = []
    for seed in cfg.run.seeds:
        idx = random.Random(seed).sample(range(len(pool)), a.k_shot)
        runs.append(evaluate_ie(generator, evalset, [pool[i] for i in idx], a.max_new_tokens))
        logger.info("APIE random seed %d: %s", seed, runs[-1])
        out["random_runs"] = runs
        out["random"] = {k: mean_std_n([r[k] for r in runs]) for k in runs[0]}
        save()


def exemplar_text(problem, rationale_chars: int) -> str:
    """A question–rationale–answer exemplar in ScienceQA's QCM→AE layout (answer, then the rationale)."""
    rationale = " ".join((problem.get("solution") or problem.get("lecture") or "").split())[:rationale_chars]
    return (
        qcm_prompt(problem, use_caption=True)
        + f"Answer: The answer is ({LETTERS[problem['answer']]}). BECAUSE: {rationale}\n\n"
    )


def evaluate_mcq(generator, problems, exemplars, rationale_chars):
    """Greedy few-shot accuracy (%) and unparsed rate: exemplars, then the question ending in 'The answer is ('."""
    prefix = "".join(exemplar_text(e, rationale_chars) for e in exemplars)
    prompts = [prefix + qcm_prompt(p, use_caption=True) + "Answer: The answer is (" for p in problems]
    outputs = generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=3, stop=["\n"]))
    choices = [extract_choice("(" + o.completions[0].text, p["choices"]) for o, p in zip(outputs, problems)]
    return {
        "accuracy": 100.0 * float(np.mean([c == p["answer"] for c, p in zip(choices, problems)])),
        "unparsed_rate": 100.0 * float(np.mean([c is None for c in choices])),
    }


def load_split():
    """The fixed ScienceQA pool / evaluation ids (disjoint; checked by tests/test_active_prompting.py)."""
    return json.loads(SPLIT_FILE.read_text())


def run_cams(cfg: ActivePromptingConfig, generator, results, save):
    """CAMS vs random few-shot / Active-Prompt on the ScienceQA evaluation part."""
    c = cfg.cams
    split = load_split()
    by_id = {p["pid"]: p for p in ScienceQA(use_caption=True).load()}
    pool = [by_id[i] for i in split["pool"][: c.pool_size]]
    evalset = [by_id[i] for i in split["eval"][: c.eval_size]]
    shots = 4 * c.per_cell
    logger.info("CAMS: pool %d, eval %d, %d-shot", len(pool), len(evalset), shots)
    out = results.setdefault("cams", {"pool_size": len(pool), "eval_size": len(evalset), "shots": shots})
    task = ScienceQA(use_caption=True)
    t0 = time.time()
    u = mcq_uncertainties(
        generator,
        [task.prompt(p, chat=True) for p in pool],
        pool,
        SamplingParams(n=c.k_samples, temperature=c.temperature, max_new_tokens=8, seed=0),
    )
    out["probe_seconds"] = time.time() - t0
    comp = [heuristic_complexity(p) for p in pool]
    out["pool_uncertainty"], out["pool_complexity"] = u, comp
    out["hard_share"] = float(np.mean([x > c.threshold for x in u]))
    ap = select_active_prompt(u, shots)
    out["active_prompt"] = evaluate_mcq(generator, evalset, [pool[i] for i in ap], c.rationale_chars)
    logger.info("CAMS active_prompt: %s", out["active_prompt"])
    save()
    for name in ("cams", "random"):
        runs = []
        for seed in cfg.run.seeds:
            idx = (
                select_cams(u, comp, c.per_cell, seed, c.threshold)
                if name == "cams"
                else random.Random(seed).sample(range(len(pool)), shots)
            )
            runs.append(evaluate_mcq(generator, evalset, [pool[i] for i in idx], c.rationale_chars))
            logger.info("CAMS %s seed %d: %s", name, seed, runs[-1])
            out[f"{name}_runs"] = runs
            out[name] = {k: mean_std_n([r[k] for r in runs]) for k in runs[0]}
            save()


def report(results) -> str:
    """Markdown tables of the measured numbers."""
    lines = []
    if "apie" in results and "apie" in results["apie"]:
        r = results["apie"]
        lines += ["| WNUT-17 | F1 per-sentence | micro F1 | format failures |", "|---|---|---|---|"]
        for name in ("zero_shot", "random", "actprompt", "apie"):
            if name not in r:
                continue
            m = r[name]
            cell = (
                (lambda k: f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}") if name == "random" else (lambda k: f"{m[k]:.3f}")
            )
            lines.append(f"| {name} | {cell('f1_sentence')} | {cell('micro_f1')} | {cell('format_failure_rate')} |")
        lines.append("")
    if "cams" in results and "active_prompt" in results["cams"]:
        r = results["cams"]
        lines += [
            "| ScienceQA | accuracy % | unparsed % |",
            "|---|---|---|",
            f"| active_prompt | {r['active_prompt']['accuracy']:.1f} | {r['active_prompt']['unparsed_rate']:.1f} |",
        ]
        for name in ("random", "cams"):
            if name in r:
                m = r[name]
                lines.append(
                    f"| {name} (n={m['accuracy']['n']}) | {m['accuracy']['mean']:.1f} ± {m['accuracy']['std']:.1f} "
                    f"| {m['unparsed_rate']['mean']:.1f} |"
                )
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    """Parse the config, run the chosen experiments, write results.json and report.md."""
    setup_logging()
    cfg = parse_recipe_args(ActivePromptingConfig, argv)  # --help lists the keys (`llmkit run active_prompting --help`)
    out_dir = Path(cfg.run.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"config": to_dict(cfg)}

    def save():
        """Write results.json and report.md (after every run, so a killed run keeps what it measured)."""
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
        (out_dir / "report.md").write_text(report(results))

    generator = build_generator(cfg.run.backend, cfg.run.model, batch_size=cfg.run.batch_size)
    results["generator"] = generator.describe()
    for exp in cfg.run.experiments:
        if exp not in ("apie", "cams"):
            raise ValueError(f"unknown experiment {exp!r}; use apie or cams")
        (run_apie if exp == "apie" else run_cams)(cfg, generator, results, save)
    save()
    print((out_dir / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
