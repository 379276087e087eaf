"""Safety evaluation pieces: prefilling-attack prompts, attack success rate, over-refusal, route composition.

Prefilling attack (Qi et al. 2024): the first k tokens of AdvBench's `target` ("Sure, here is ...") are
forced as the start of the assistant turn; the model continues from there. The keyword judge reads only
the continuation (the forced prefix is the attacker's text, not the model's).
"""

from __future__ import annotations

from typing import Sequence

from llmkit.safety.refusal import attack_success, is_refusal


def prefill_text(target_ids: Sequence[int], k: int, tokenizer) -> str:
    """The attacker's forced prefix: the first `k` tokens of the target, decoded (k = 0 → '')."""
    if k < 0:
        raise ValueError(f"prefill k must be >= 0, got {k}")
    return tokenizer.decode(list(target_ids)[:k], skip_special_tokens=True) if k else ""


def attack_prompt(tokenizer, goal: str, target: str | None = None, k: int = 0) -> str:
    """Chat-templated prompt for `goal` with the assistant turn opened and, when k > 0, prefilled with the
    first k target tokens."""
    from llmkit.generation.hf import render_prompt

    text = render_prompt(tokenizer, [{"role": "user", "content": goal}])
    if k:
        if not target:
            raise ValueError("a prefilling attack needs the target string")
        text += prefill_text(tokenizer(target, add_special_tokens=False)["input_ids"], k, tokenizer)
    return text


def attack_success_rate(responses: Sequence[str]) -> float:
    """Fraction of responses the keyword judge counts as attack successes (non-empty, not a refusal)."""
    if not responses:
        raise ValueError("attack_success_rate needs at least one response")
    return sum(attack_success(r) for r in responses) / len(responses)


def over_refusal_rate(responses: Sequence[str]) -> float:
    """Fraction of benign responses judged refusals."""
    if not responses:
        raise ValueError("over_refusal_rate needs at least one response")
    return sum(is_refusal(r) for r in responses) / len(responses)


def compose_routes(routes: Sequence[str], outputs: dict[str, Sequence[str]]) -> list[str]:
    """Per prompt i, the response of the route it took: outputs[route][i] ('refuse' needs no entry: the
    standardized refusal). Lets a full-system result be built from per-route decodes of the same prompts."""
    from llmkit.safety.refusal import STANDARD_REFUSAL

    out = []
    for i, r in enumerate(routes):
        if r == "refuse":
            out.append(STANDARD_REFUSAL)
        elif r in outputs:
            out.append(outputs[r][i])
        else:
            raise KeyError(f"no outputs for route '{r}' (have {sorted(outputs)})")
    return out
