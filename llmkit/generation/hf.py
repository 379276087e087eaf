"""transformers backend: batched generation with left padding and the KV cache (the CPU fallback)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams, truncate_at_stop


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """Chat messages → the text the chat template produces (with the assistant prefix); text stays text."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class HFGenerator(Generator):
    """Generate with `model.generate`: prompts sorted by length, batched, left-padded; n samples per prompt."""

    backend_name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, show_progress: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def describe(self) -> dict[str, Any]:
        """Backend, model and batch size for results files."""
        return {"backend": "hf", "model": getattr(self.model.config, "_name_or_path", "?"), "batch_size": self.batch_size}

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """Generate `params.n` completions per prompt; outputs come back in the prompts' order."""
        from tqdm.auto import tqdm

        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # less padding per batch
        results: list[GenerationOutput | None] = [None] * len(texts)
        # Greedy decoding gives n identical samples: decode once and copy.
        samples = 1 if params.greedy else params.n
        per_batch = max(1, self.batch_size // samples)
        batches = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        for b, batch in enumerate(tqdm(batches, desc="generate (hf)", disable=not self.show_progress)):
            if params.seed is not None:
                torch.manual_seed(params.seed + b)
            outs = self._generate_batch([encoded[i] for i in batch], params, samples)
            for j, i in enumerate(batch):
                completions = outs[j * samples : (j + 1) * samples]
                if samples < params.n:
                    completions = [completions[0]] * params.n
                results[i] = GenerationOutput(prompt_text=texts[i], completions=completions)
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch_ids: list[list[int]], params: SamplingParams, samples: int) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in batch_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch_ids], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], device=device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_logits=params.logprobs,
        )
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        generated = out.sequences[:, width:]
        token_logprobs = None
        if params.logprobs:
            logits = torch.stack(out.logits, dim=1).float()  # (batch, steps, vocab), before any processing
            token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, generated[:, : logits.shape[1], None])[..., 0]
        eos_ids = self._eos_ids()
        completions = []
        for row in range(generated.shape[0]):
            ids = generated[row].tolist()
            end, hit_eos = len(ids), False
            for k, t in enumerate(ids):
                if t in eos_ids:
                    end, hit_eos = k + 1, True
                    break
            ids = ids[:end]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            text, hit_stop = truncate_at_stop(text, params.stop)
            reason = "stop" if hit_eos or hit_stop else "length"
            logprobs = token_logprobs[row, : len(ids)].tolist() if token_logprobs is not None else None
            completions.append(Completion(text=text, token_ids=ids, finish_reason=reason, logprobs=logprobs))
        return completions

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        return {i for i in ids + [self.tokenizer.eos_token_id] if i is not None}
