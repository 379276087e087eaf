"""The hf backend on a tiny random model: order under batching, n samples, stop strings, logprobs."""

from __future__ import annotations

import pytest
import torch

from llmkit.generation.hf import HFGenerator
from llmkit.generation.types import SamplingParams, truncate_at_stop
from llmkit.models import ModelConfig, load_model


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))


PROMPTS = ["def add(a, b):", "Hello there, how", [{"role": "user", "content": "Name a colour."}], "x" * 40]


def test_batched_greedy_equals_one_at_a_time_and_keeps_order(tiny, tokenizer):
    params = SamplingParams(max_new_tokens=8)
    batched = HFGenerator(tiny, tokenizer, batch_size=4, show_progress=False).generate(PROMPTS, params)
    single = HFGenerator(tiny, tokenizer, batch_size=1, show_progress=False).generate(PROMPTS, params)
    assert [o.completions[0].token_ids for o in batched] == [o.completions[0].token_ids for o in single]
    assert batched[2].prompt_text.endswith("<|im_start|>assistant\n")  # chat template applied
    assert batched[0].prompt_text == "def add(a, b):"
    assert all(o.completions[0].finish_reason == "length" and len(o.completions[0].token_ids) == 8 for o in batched)


def test_n_samples_seeded_and_logprobs_match_a_forward_pass(tiny, tokenizer):
    gen = HFGenerator(tiny, tokenizer, batch_size=8, show_progress=False)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=7, logprobs=True)
    a = gen.generate(PROMPTS[:2], params)
    b = gen.generate(PROMPTS[:2], params)
    assert [len(o.completions) for o in a] == [3, 3]
    assert [c.token_ids for o in a for c in o.completions] == [c.token_ids for o in b for c in o.completions]
    completion = a[0].completions[0]
    prompt_ids = tokenizer("def add(a, b):", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(tiny(ids).logits[0].float(), -1)
    expected = [logp[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(completion.token_ids)]
    assert completion.logprobs == pytest.approx(expected, abs=1e-4)


def test_stop_strings_cut_the_text():
    assert truncate_at_stop("abc\ndef x", ["\ndef", "zz"]) == ("abc", True)
    assert truncate_at_stop("abc", ["\n"]) == ("abc", False)
    assert truncate_at_stop("a.b.c", [".", "b"]) == ("a", True)


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
