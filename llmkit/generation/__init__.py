"""One generation interface over several backends: hf (transformers) and openai (any compatible server)."""

from __future__ import annotations

from llmkit.errors import ConfigError
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams

__all__ = ["Completion", "GenerationOutput", "Generator", "Prompt", "SamplingParams", "build_generator"]


def build_generator(backend: str, model: str, batch_size: int = 8, base_url: str = "http://127.0.0.1:8000/v1") -> Generator:
    """A generator for `model` (alias, HF folder, or a folder saved by a recipe, LoRA merged) on `backend`.

    For `openai`, `model` is the name the server knows the model by and `base_url` its /v1 address.
    """
    if backend == "openai":
        from llmkit.generation.openai_client import OpenAIGenerator

        return OpenAIGenerator(base_url, model, max_concurrency=batch_size)
    if backend == "hf":
        from pathlib import Path

        from llmkit.generation.hf import HFGenerator
        from llmkit.models import ModelConfig, load_model_and_tokenizer, load_trained

        if (Path(model) / "adapter_config.json").is_file():
            lm, tokenizer = load_trained(model)
        else:
            lm, tokenizer = load_model_and_tokenizer(ModelConfig(name=model))
        return HFGenerator(lm, tokenizer, batch_size=batch_size)
    raise ConfigError(f"backend '{backend}' is not available yet (the vllm backend lands with the harness issue); use hf or openai")
