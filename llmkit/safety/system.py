"""The routed SafeThinker system behind the one generation interface: gateway → refuse / twin / DDGT / base.

`SafeThinker.generate` returns the usual GenerationOutput list; `last_routes` (and `respond`) give the route
and gateway score of each prompt, which a server returns as response metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from llmkit.generation.hf import render_prompt
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams, truncate_at_stop
from llmkit.safety.ddgt import DDGTConfig, ddgt_generate
from llmkit.safety.refusal import STANDARD_REFUSAL


def _user_text(prompt: Prompt) -> str:
    """The text the gateway scores: the prompt itself, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("a chat prompt needs at least one user message for the gateway")
    return users[-1]


class DDGTGenerator(Generator):
    """Base model decoded with DDGT against the twin, one prompt at a time (both KV caches kept)."""

    backend_name = "hf-ddgt"

    def __init__(self, base, twin, tokenizer, settings: DDGTConfig = DDGTConfig()):
        self.base, self.twin, self.tokenizer, self.settings = base.eval(), twin.eval(), tokenizer, settings
        eos = base.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in eos + [tokenizer.eos_token_id] if i is not None}
        self.steered_steps = 0
        self.steps = 0

    def describe(self) -> dict[str, Any]:
        """Backend and DDGT settings."""
        return {"backend": self.backend_name, "ddgt": self.settings.__dict__}

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """`params.n` DDGT completions per prompt (greedy when temperature is 0; `top_p` is not applied)."""
        outputs = []
        for i, prompt in enumerate(prompts):
            text = render_prompt(self.tokenizer, prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            gen = torch.Generator().manual_seed(params.seed + i) if params.seed is not None else None
            completions = []
            for _ in range(1 if params.greedy else params.n):
                r = ddgt_generate(
                    self.base,
                    self.twin,
                    self.tokenizer,
                    ids,
                    params.max_new_tokens,
                    self.settings,
                    params.temperature,
                    gen,
                    self.eos_ids,
                )
                self.steered_steps += r.steered_steps
                self.steps += r.steps
                out, hit_stop = truncate_at_stop(r.text, params.stop)
                hit_eos = bool(r.token_ids) and r.token_ids[-1] in self.eos_ids
                completions.append(Completion(out, r.token_ids, "stop" if hit_eos or hit_stop else "length"))
            outputs.append(GenerationOutput(text, completions * (params.n if params.greedy else 1)))
        return outputs


@dataclass
class RoutedOutput:
    """One prompt's answer with its route ('refuse', 'twin', 'ddgt', 'base') and gateway score."""

    route: str
    score: float
    output: GenerationOutput


class SafeThinker(Generator):
    """Gateway-routed generation: refuse (standardized refusal, no generation), twin, ddgt or base."""

    backend_name = "safethinker"

    def __init__(self, gateway, base: Generator, twin: Generator, ddgt: Generator | None = None):
        if gateway.thresholds is None:
            raise ValueError("the gateway has no thresholds: calibrate it on validation first")
        self.gateway, self.routes = gateway, {"base": base, "twin": twin, "ddgt": ddgt if ddgt is not None else base}
        self.last_routes: list[tuple[str, float]] = []

    def describe(self) -> dict[str, Any]:
        """Gateway state and each route's backend."""
        return {
            "backend": self.backend_name,
            "gateway": type(self.gateway).__name__,
            "thresholds": self.gateway.thresholds.__dict__,
            **{k: g.describe() for k, g in self.routes.items()},
        }

    def respond(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[RoutedOutput]:
        """Route every prompt, decode each route's prompts as one batch, return answers in order."""
        routed = self.gateway.route([_user_text(p) for p in prompts])
        results: list[RoutedOutput | None] = [None] * len(prompts)
        for i, (route, score) in enumerate(routed):
            if route == "refuse":
                c = Completion(STANDARD_REFUSAL, [], "stop")
                results[i] = RoutedOutput(route, score, GenerationOutput("", [c] * params.n))
        for name, gen in self.routes.items():
            idx = [i for i, (r, _) in enumerate(routed) if r == name]
            if idx:
                for i, out in zip(idx, gen.generate([prompts[i] for i in idx], params)):
                    results[i] = RoutedOutput(name, routed[i][1], out)
        for r in results:  # the route travels with the answer (a server returns it as response metadata)
            r.output.metadata["safethinker"] = {"route": r.route, "score": round(r.score, 6)}
        self.last_routes = routed
        return results  # type: ignore[return-value]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """The routed answers as GenerationOutputs; each carries `metadata["safethinker"]` = {route, score}."""
        return [r.output for r in self.respond(prompts, params)]


def load_safethinker(
    twin_dir: str, gateway_path: str, base: str | None = None, settings: DDGTConfig = DDGTConfig(), batch_size: int = 8
) -> SafeThinker:
    """Build the routed system from a trained SATE twin folder and a saved gateway (`save_gateway`).

    The base model is `base` (alias, folder or hub id) or, by default, the twin adapter's own base. The twin
    is base + its LoRA, merged; the DDGT route decodes the base against it.
    """
    import json
    from pathlib import Path

    from llmkit.errors import ConfigError, ModelError
    from llmkit.generation.hf import HFGenerator
    from llmkit.models import ModelConfig, load_model, load_trained
    from llmkit.safety.gateway import load_gateway

    # Check the inputs before loading two models: a typo should cost a second, not a minute.
    if not Path(twin_dir).is_dir():
        raise ModelError(f"twin folder not found: {twin_dir}")
    if not Path(gateway_path).is_file():
        raise ConfigError(f"gateway file not found: {gateway_path}")
    adapter_cfg = Path(twin_dir) / "adapter_config.json"
    if base is None:
        if not adapter_cfg.is_file():
            raise ConfigError(f"{twin_dir} is a full model, not a LoRA twin: name the base model with --base")
        base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
    twin, tokenizer = load_trained(twin_dir)
    base_model = load_model(ModelConfig(name=base, dtype="float32"), vocab_size=len(tokenizer))
    gateway = load_gateway(gateway_path, base_model, tokenizer)
    return SafeThinker(
        gateway,
        HFGenerator(base_model, tokenizer, batch_size=batch_size, show_progress=False),
        HFGenerator(twin, tokenizer, batch_size=batch_size, show_progress=False),
        DDGTGenerator(base_model, twin, tokenizer, settings),
    )
