"""Policy evaluation for RL recipes: avg@n accuracy, pass@k, response length, and NAG against a base."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from llmkit.evaluation.metrics import mean_pass_at_k
from llmkit.generation.types import Generator, SamplingParams
from llmkit.rl.ceeh import nag
from llmkit.rl.rewards import score_completions


def evaluate_policy(
    generator: Generator,
    prompts: list[dict[str, Any]],
    reward_fn: Callable[[str, dict], float],
    n: int = 8,
    temperature: float = 0.6,
    max_new_tokens: int = 256,
    seed: int = 0,
    ks: tuple[int, ...] = (1, 2, 4, 8),
) -> dict[str, float]:
    """Sample n completions per prompt; accuracy = mean over all samples (avg@n), pass@k (unbiased), lengths."""
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    outputs = generator.generate([p["prompt"] for p in prompts], params)
    texts = [c.text for out in outputs for c in out.completions]
    owners = [p for p, out in zip(prompts, outputs) for _ in out.completions]
    flat = iter(score_completions(reward_fn, texts, owners))
    correct = [[next(flat) >= 1.0 for _ in out.completions] for out in outputs]
    lengths = np.array([[len(c.token_ids) for c in out.completions] for out in outputs], dtype=np.float64)
    mask = np.array(correct, dtype=bool)
    result = {
        "accuracy": float(mask.mean()),
        "length": float(lengths.mean()),
        "correct_length": float(lengths[mask].mean()) if mask.any() else float("nan"),
    }
    result.update(mean_pass_at_k(correct, [k for k in ks if k <= n]))
    return result


def with_nag(result: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Add NAG = 100·(1 − Acc/Acc_base)·sqrt(1 − L/L_base) when the run is not longer than the base (else NaN)."""
    out = dict(result)
    ok = base["accuracy"] > 0 and result["length"] <= base["length"]
    out["nag"] = nag(result["accuracy"], result["length"], base["accuracy"], base["length"]) if ok else float("nan")
    return out
