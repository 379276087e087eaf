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


@pytest.mark.parametrize(
    "omp, available, total, load, current, expected",
    [
        ("1", 16, 16, 0.0, 16, 1),  # OMP_NUM_THREADS is obeyed ...
        ("6", 2, 2, 5.0, 2, 6),  # ... even above the free cores: the user asked
        ("4,2", 8, 8, 0.0, 8, 4),  # a nested list: its first entry
        (None, 2, 2, 0.1, 2, 2),  # an idle 2-core box: both cores
        (None, 2, 2, 1.2, 2, 1),  # one core busy with other work: one thread
        (None, 2, 2, 4.5, 2, 1),  # overloaded: never below 1
        (None, 4, 64, 10.0, 32, 4),  # affinity limits a big machine to 4 cores
        (None, 64, 64, 40.0, 32, 24),  # 24 cores free
        (None, 64, 64, 0.0, 32, 32),  # never more than torch would use (physical cores)
        ("", 8, 8, 2.0, 8, 6),  # empty, zero or junk OMP_NUM_THREADS: ignored
        ("0", 8, 8, 2.0, 8, 6),
        ("many", 8, 8, 2.0, 8, 6),
    ],
)
def test_thread_choice(omp, available, total, load, current, expected):
    from llmkit.generation.hf import choose_threads

    threads, why = choose_threads(omp, available, total, load, current)
    assert threads == expected and why


def test_threads_are_set_once_and_logged(monkeypatch, caplog):
    import llmkit.generation.hf as hf

    before = torch.get_num_threads()
    monkeypatch.setattr(hf, "_chosen_threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        with caplog.at_level("INFO", logger="llmkit.generation.hf"):
            assert hf.set_generation_threads() == 1 and torch.get_num_threads() == 1
            monkeypatch.setenv("OMP_NUM_THREADS", "3")
            assert hf.set_generation_threads() == 1  # chosen once per process
        assert [r.getMessage() for r in caplog.records] == ["hf generation: 1 torch thread(s) (OMP_NUM_THREADS=1)"]
    finally:
        torch.set_num_threads(before)


def test_progress_advances_within_one_batch(tiny, tokenizer, monkeypatch):
    """The bar counts tokens as they are generated: many updates inside one batch, an ETA, the right total."""
    import io

    import llmkit.generation.hf as hf

    bars = []

    class Recorder(hf.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "mininterval": 0})
            self.updates = []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)
            return super().update(n)

    monkeypatch.setattr(hf, "tqdm", Recorder)
    gen = HFGenerator(tiny, tokenizer, batch_size=8, show_progress=True)
    gen.generate(PROMPTS, SamplingParams(max_new_tokens=6))  # 4 prompts: one batch
    (bar,) = bars
    assert len(bar.updates) == 6 and set(bar.updates) == {4}  # one update per decoding step, 4 sequences each
    assert bar.n == bar.total == 24
    assert "<" in bar.fp.getvalue()  # tqdm's [elapsed<remaining] ETA was shown
    # a batch that stops early (at a stop string) takes its unused budget out of the total
    first = gen.generate(PROMPTS[:1], SamplingParams(max_new_tokens=1))[0].completions[0].text
    assert first  # greedy: the same first token comes again below, and its text stops generation there
    bars.clear()
    out = gen.generate(PROMPTS[:1], SamplingParams(max_new_tokens=30, stop=[first]))
    (bar,) = bars
    assert bar.n == bar.total == len(out[0].completions[0].token_ids) < 30
