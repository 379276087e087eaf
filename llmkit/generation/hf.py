"""transformers backend: batched generation with left padding and the KV cache (the CPU fallback)."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams, truncate_at_stop

logger = logging.getLogger(__name__)

# the torch thread count this process chose for generation (None: not chosen yet); set once per process
_chosen_threads: int | None = None


def choose_threads(
    omp_num_threads: str | None, available_cores: int, total_cores: int, load_1min: float, current: int
) -> tuple[int, str]:
    """How many torch threads to generate with, and why (a pure function of its inputs).

    - OMP_NUM_THREADS, when set to a positive number (its first entry, for a nested list), is obeyed;
    - otherwise the fewest of: the threads torch would use now (`current`), the cores this process may run
      on (`available_cores`, its affinity) and the cores not busy with other work (`total_cores` minus the
      1-minute load average, rounded); never below 1. On a shared machine more threads than free cores make
      every thread wait for the others at each matrix product: torch's default ran 10-25x slower than one
      thread on a loaded 2-core box (issue 22: 472 s against 20 s per ScienceQA batch).
    """
    first = (omp_num_threads or "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return int(first), f"OMP_NUM_THREADS={omp_num_threads}"
    free = int(total_cores - load_1min + 0.5)
    threads = max(1, min(current, available_cores, free))
    return threads, (
        f"torch default {current}, {available_cores} cores available, "
        f"{max(free, 0)} free (load {load_1min:.1f} on {total_cores})"
    )


def set_generation_threads() -> int:
    """Choose the torch thread count once per process (`choose_threads` on this machine), set it and log it;
    later calls return the choice already made."""
    global _chosen_threads
    if _chosen_threads is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        threads, why = choose_threads(
            os.environ.get("OMP_NUM_THREADS"), available, os.cpu_count() or available, load, torch.get_num_threads()
        )
        torch.set_num_threads(threads)
        _chosen_threads = threads
        logger.info("hf generation: %d torch thread(s) (%s)", threads, why)
    return _chosen_threads


class _StepProgress(StoppingCriteria):
    """A stopping criterion that never stops: `generate` calls it once per decoding step, which advances
    the progress bar by one token for each of the batch's `rows` sequences."""

    def __init__(self, bar, rows: int):
        self.bar, self.rows, self.steps = bar, rows, 0

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.steps += 1
        self.bar.update(self.rows)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """Chat messages → the text the chat template produces (with the assistant prefix); text stays text."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class HFGenerator(Generator):
    """Generate with `model.generate`: prompts sorted by length, batched, left-padded; n samples per prompt.

    `set_threads`: choose torch's thread count for this process on the first construction
    (`set_generation_threads`: OMP_NUM_THREADS if set, else the cores that are free).
    """

    backend_name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, show_progress: bool = True, set_threads: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if set_threads:
            set_generation_threads()

    def describe(self) -> dict[str, Any]:
        """Backend, model, batch size and torch threads for results files."""
        return {
            "backend": "hf",
            "model": getattr(self.model.config, "_name_or_path", "?"),
            "batch_size": self.batch_size,
            "torch_threads": torch.get_num_threads(),
        }

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GenerationOutput]:
        """Generate `params.n` completions per prompt; outputs come back in the prompts' order.

        The progress bar counts generated tokens (one per sequence per decoding step), so it moves within a
        batch and shows an ETA; its total assumes every batch runs to `max_new_tokens` and shrinks when a
        batch ends early, so the ETA is an upper bound.
        """
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # less padding per batch
        results: list[GenerationOutput | None] = [None] * len(texts)
        # Greedy decoding gives n identical samples: decode once and copy.
        samples = 1 if params.greedy else params.n
        per_batch = max(1, self.batch_size // samples)
        batches = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        bar = tqdm(
            total=len(order) * samples * params.max_new_tokens,
            desc="generate (hf)",
            unit="tok",
            disable=not self.show_progress,
        )
        try:
            for b, batch in enumerate(batches):
                if params.seed is not None:
                    torch.manual_seed(params.seed + b)
                progress = _StepProgress(bar, len(batch) * samples) if self.show_progress else None
                outs = self._generate_batch([encoded[i] for i in batch], params, samples, progress)
                if progress is not None:  # a batch that stopped before max_new_tokens gives its unused budget back
                    bar.total -= progress.rows * (params.max_new_tokens - progress.steps)
                    bar.set_postfix(sequences=f"{sum(r is not None for r in results) + len(batch)}/{len(order)}")
                for j, i in enumerate(batch):
                    completions = outs[j * samples : (j + 1) * samples]
                    if samples < params.n:
                        completions = [completions[0]] * params.n
                    results[i] = GenerationOutput(prompt_text=texts[i], completions=completions)
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    def _generate_batch(
        self, batch_ids: list[list[int]], params: SamplingParams, samples: int, progress: _StepProgress | None = None
    ) -> list[Completion]:
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
        if progress is not None:
            kwargs.update(stopping_criteria=StoppingCriteriaList([progress]))
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
