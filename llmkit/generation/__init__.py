"""One generation interface over several backends (hf here; vllm and openai land with the harness issue)."""

from __future__ import annotations

from llmkit.errors import ConfigError
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams

__all__ = ["Completion", "GenerationOutput", "Generator", "Prompt", "SamplingParams", "build_generator"]


def build_generator(backend: str, model: str, batch_size: int = 8) -> Generator:
    """A generator for `model` (alias, HF folder, or a folder saved by a recipe, LoRA merged) on `backend`."""
    if backend == "hf":
        from pathlib import Path

        from llmkit.generation.hf import HFGenerator
        from llmkit.models import ModelConfig, load_model_and_tokenizer, load_trained

        if (Path(model) / "adapter_config.json").is_file():
            lm, tokenizer = load_trained(model)
        else:
            lm, tokenizer = load_model_and_tokenizer(ModelConfig(name=model))
        return HFGenerator(lm, tokenizer, batch_size=batch_size)
    raise ConfigError(f"backend '{backend}' is not available yet; use --backend hf")
