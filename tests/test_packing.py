"""Packing collators: hand-computed packs, equal loss tokens, and padding-free == unpacked numerically."""

from __future__ import annotations

import pytest
import torch

from llmkit.data.packing import (
    PackingStats,
    check_packing_isolation,
    collate_dynamic_pack,
    collate_examples,
    collate_padding_free,
    model_forward_inputs,
    next_fit_packs,
)
from llmkit.data.sft import IGNORE_INDEX, TokenizedExample
from llmkit.errors import ConfigError
from llmkit.models import ModelConfig, load_model
from llmkit.train.losses import count_target_tokens
from llmkit.train.packed_attention import (
    PER_EXAMPLE_SDPA,
    per_example_attention_unsupported,
    per_example_causal_attention,
    segment_lengths,
    use_per_example_attention,
)

PAD = 0


@pytest.fixture(scope="module")
def varied_examples(tokenizer):
    """48 real CodeAlpaca rows with their natural, unequal lengths (up to 512 tokens)."""
    from llmkit.data import DataConfig, load_sft_data

    cfg = DataConfig(
        path="codealpaca/code_alpaca_2k.json",
        columns={"prompt": ["instruction", "input"], "response": "output"},
        max_rows=48,
        max_length=512,
    )
    return load_sft_data(cfg, tokenizer).train


def example(ids, n_prompt):
    """An example whose first `n_prompt` tokens are context (label -100)."""
    return TokenizedExample(list(ids), [IGNORE_INDEX] * n_prompt + list(ids[n_prompt:]), "x")


def test_next_fit_packs_by_hand():
    # sorted lengths 2, 3, 5, 8: 2+3+5 = 10 fits max 10 exactly; 8 starts a new pack
    assert next_fit_packs([5, 3, 8, 2], 10) == [[3, 1, 0], [2]]
    # next-fit never goes back: 4+4 fits 9, then 5 opens a pack, then 5 does not fit beside it
    assert next_fit_packs([4, 4, 5, 5], 9) == [[0, 1], [2], [3]]
    # an example longer than max_length gets its own pack
    assert next_fit_packs([12, 1, 1], 10) == [[1, 2], [0]]
    with pytest.raises(ValueError):
        next_fit_packs([1], 0)


def test_dynamic_pack_tensors_by_hand():
    a = example([11, 12, 13], 1)  # length 3
    b = example([21, 22], 1)  # length 2
    c = example([31, 32, 33, 34], 2)  # length 4
    batch = collate_dynamic_pack([a, b, c], PAD, max_length=6)
    # sorted by length: b(2), a(3), c(4); b+a = 5 <= 6, + c = 9 > 6 → rows [b a], [c]; width 5
    assert batch["input_ids"].tolist() == [[21, 22, 11, 12, 13], [31, 32, 33, 34, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    N = IGNORE_INDEX
    # first label of every example masked; a's token 11 is context anyway; padding -100
    assert batch["labels"].tolist() == [[N, 22, N, 12, 13], [N, N, 33, 34, N]]
    assert "position_ids" not in batch  # positions run on across a row, as in the paper's code
    stats = PackingStats()
    stats.add(batch)
    assert stats.padding_rate == pytest.approx(1 / 10)
    assert stats.examples_per_row == pytest.approx(3 / 2)


def test_padding_free_tensors_by_hand():
    a = example([11, 12, 13], 1)
    b = example([21, 22], 0)
    batch = collate_padding_free([a, b], max_length=8)
    N = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[N, 12, 13, N, 22]]
    assert batch["seq_lengths"].tolist() == [3, 2]
    assert "attention_mask" not in batch
    stats = PackingStats()
    stats.add(batch)
    assert stats.padding_rate == 0.0 and stats.examples_per_row == 2.0


def test_truncation_to_max_length():
    a = example([1, 2, 3, 4, 5], 2)
    batch = collate_padding_free([a], max_length=3)
    assert batch["input_ids"].tolist() == [[1, 2, 3]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 3]]


def test_loss_tokens_identical_in_every_mode(code_examples):
    batch_examples = code_examples[:16]
    expected = sum(ex.num_target_tokens for ex in batch_examples)
    counts = {
        mode: count_target_tokens(collate_examples(batch_examples, PAD, mode, 2048)["labels"])
        for mode in ("none", "dynamic", "padding_free")
    }
    assert counts == {"none": expected, "dynamic": expected, "padding_free": expected}
    with pytest.raises(ConfigError, match="unknown packing mode"):
        collate_examples(batch_examples, PAD, "greedy")  # type: ignore[arg-type]


def test_dynamic_pack_lowers_padding_on_real_data(varied_examples):
    none, dyn = PackingStats(), PackingStats()
    for start in range(0, 48, 16):
        chunk = varied_examples[start : start + 16]
        none.add(collate_examples(chunk, PAD, "none"))
        dyn.add(collate_examples(chunk, PAD, "dynamic", 512))
    assert dyn.real_tokens == none.real_tokens
    assert dyn.padding_rate < none.padding_rate
    assert dyn.examples_per_row > 1.0


def per_example_outputs(model, examples):
    """Logits and summed loss of each example on its own (the reference)."""
    from llmkit.train.losses import token_cross_entropy_sum

    logits, losses = [], []
    for ex in examples:
        batch = collate_examples([ex], PAD, "none")
        out = model(input_ids=batch["input_ids"]).logits
        logits.append(out[0])
        losses.append(token_cross_entropy_sum(out, batch["labels"])[0])
    return logits, losses


def padding_free_outputs(model, examples):
    """Logits and summed loss of each example, cut out of one padding-free packed forward."""
    import torch.nn.functional as F

    batch = collate_padding_free(examples, max_length=4096)
    logits = model(**model_forward_inputs(batch)).logits[0]
    out_logits, out_losses, start = [], [], 0
    for n in batch["seq_lengths"].tolist():
        seg = logits[start : start + n]
        labels = batch["labels"][0, start : start + n]
        out_logits.append(seg)
        out_losses.append(F.cross_entropy(seg[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX, reduction="sum"))
        start += n
    return out_logits, out_losses


def tiny_llama(tokenizer, attn):
    """The tiny random Llama with `attn` ("sdpa", "eager", or llmkit's per-example SDPA)."""
    model = load_model(
        ModelConfig(name="tiny-random-llama", attn_implementation="sdpa" if attn == PER_EXAMPLE_SDPA else attn),
        vocab_size=len(tokenizer),
    )
    if attn == PER_EXAMPLE_SDPA:
        assert use_per_example_attention(model)
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager", PER_EXAMPLE_SDPA])
@torch.no_grad()
def test_padding_free_equals_unpacked_on_tiny_llama(varied_examples, tokenizer, attn):
    model = tiny_llama(tokenizer, attn).eval()
    assert model.config._attn_implementation == attn
    examples = varied_examples[:6]
    ref_logits, ref_losses = per_example_outputs(model, examples)
    got_logits, got_losses = padding_free_outputs(model, examples)
    for r, g in zip(ref_logits, got_logits):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
    # Summed token losses are ~10^2: 1e-5 absolute is below float32's resolution there (1 ulp of 226 is 1.5e-5),
    # and the summation order follows the thread split, so allow a few ulps relative; a packing leak is ~1e-1.
    torch.testing.assert_close(torch.stack(got_losses), torch.stack(ref_losses), atol=1e-5, rtol=1e-6)
    assert check_packing_isolation(model) < 1e-5


def test_segment_lengths_by_hand():
    assert segment_lengths(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [3, 2, 4]
    assert segment_lengths(torch.tensor([0, 0, 0])) == [1, 1, 1]
    assert segment_lengths(torch.tensor([[4, 5, 6]])) == [3]  # an offset row is one example (a cache continuation)
    assert segment_lengths(torch.tensor([[0, 1, 5, 6]])) == [2, 2]  # any jump starts an example, as transformers
    assert segment_lengths(torch.zeros(1, 0, dtype=torch.long)) == []


def test_per_example_attention_equals_block_diagonal_sdpa():
    """Per-slice causal SDPA == one SDPA call with the block-diagonal causal mask built by hand."""
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 1, 5, 2]
    q, k, v = (torch.randn(1, 2, 11, 8, generator=gen) for _ in range(3))
    mask = torch.zeros(11, 11, dtype=torch.bool)
    start = 0
    for n in lengths:
        mask[start : start + n, start : start + n] = torch.ones(n, n).tril().bool()
        start += n
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(per_example_causal_attention(q, k, v, lengths), reference, atol=1e-6, rtol=0)
    # the first token of each example sees only itself: its output is its own value vector
    torch.testing.assert_close(per_example_causal_attention(q, k, v, lengths)[0, :, 3], v[0, :, 3])
    with pytest.raises(ValueError, match="sum to 10"):
        per_example_causal_attention(q, k, v, [3, 7 - 1, 1])
    # grouped-query attention: 4 query heads share 2 KV heads, as with the KV heads repeated
    q4 = torch.randn(1, 4, 11, 8, generator=gen)
    repeated = [t.repeat_interleave(2, dim=1) for t in (k, v)]
    torch.testing.assert_close(
        per_example_causal_attention(q4, k, v, lengths),
        per_example_causal_attention(q4, *repeated, lengths),
        atol=1e-6,
        rtol=0,
    )


@torch.no_grad()
def test_per_example_attention_leaves_padded_batches_and_generation_unchanged(tokenizer):
    """Outside a packed row the model behaves exactly as with sdpa: padded batches, KV-cache decoding."""
    reference = tiny_llama(tokenizer, "sdpa").eval()
    model = tiny_llama(tokenizer, PER_EXAMPLE_SDPA).eval()
    model.load_state_dict(reference.state_dict())
    ids = torch.randint(3, 200, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask).logits,
        reference(input_ids=ids, attention_mask=mask).logits,
        atol=0,
        rtol=0,
    )
    prompt = ids[:1]
    assert (
        model.generate(prompt, max_new_tokens=6, do_sample=False).tolist()
        == reference.generate(prompt, max_new_tokens=6, do_sample=False).tolist()
    )


def test_per_example_attention_refuses_unsuitable_models(tokenizer):
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    assert per_example_attention_unsupported(model) is None
    model.config.model_type = "gemma3"  # masks with image-token and sliding-window ingredients
    assert "gemma3" in per_example_attention_unsupported(model)
    assert use_per_example_attention(model) is False and model.config._attn_implementation == "sdpa"
    model.config.model_type = "llama"
    model.config._attn_implementation = "flash_attention_2"
    assert "FlashAttention" in per_example_attention_unsupported(model)
    model.config._attn_implementation = "eager"
    assert "eager" in per_example_attention_unsupported(model)
    model.config._attn_implementation = "sdpa"
    model.config.layer_types = ["full_attention", "sliding_attention"]
    assert "sliding_attention layers" in per_example_attention_unsupported(model)
    model.config.layer_types = None
    model.config.sliding_window = 16
    assert "sliding" in per_example_attention_unsupported(model)


def test_per_example_attention_refuses_a_row_it_cannot_split():
    """No mask was built for a single row; without position ids the function must not fall back to plain SDPA."""
    from llmkit.train.packed_attention import per_example_sdpa_forward

    q = torch.randn(1, 2, 5, 8)
    module = torch.nn.Module()
    with pytest.raises(RuntimeError, match="without position ids"):
        per_example_sdpa_forward(module, q, q, q, None)
    out, _ = per_example_sdpa_forward(module, q, q, q, None, position_ids=torch.tensor([[0, 1, 0, 1, 2]]))
    assert out.shape == (1, 5, 2, 8)


@torch.no_grad()
def test_a_kv_cache_breaks_isolation_so_the_trainer_turns_it_off(varied_examples, tokenizer):
    """Why model_forward_inputs passes use_cache=False: with a cache, transformers mixes packed examples."""
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer)).eval()
    batch = collate_padding_free(varied_examples[:2], max_length=4096)
    n0 = int(batch["seq_lengths"][0])
    second = torch.tensor([varied_examples[1].input_ids])
    alone = model(input_ids=second).logits[0]
    with_cache = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0, n0:]
    assert (with_cache - alone).abs().max() > 1e-3
    assert model_forward_inputs(batch)["use_cache"] is False


@torch.no_grad()
def test_dynamic_pack_lets_examples_see_each_other(code_examples, tokenizer):
    """The faithful Dynamic Pack is naive packing: a later example's logits change (that is the paper's method)."""
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer)).eval()
    a, b = code_examples[0], code_examples[1]
    batch = collate_dynamic_pack([a, b], PAD, max_length=4096)
    assert batch["input_ids"].shape[0] == 1
    first = sorted([a, b], key=lambda e: len(e.input_ids))
    n0 = len(first[0].input_ids)
    packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0]
    alone = model(input_ids=torch.tensor([first[1].input_ids])).logits[0]
    torch.testing.assert_close(
        packed[:n0], model(input_ids=torch.tensor([first[0].input_ids])).logits[0], atol=1e-5, rtol=0
    )
    assert (packed[n0 : n0 + len(first[1].input_ids)] - alone).abs().max() > 1e-3


class CumulativeMeanLM(torch.nn.Module):
    """A toy LM whose 'attention' is a running mean over the whole row: it ignores position ids."""

    def __init__(self, vocab=50):
        super().__init__()
        self.config = type("Cfg", (), {"_attn_implementation": "sdpa", "vocab_size": vocab})()
        self.embed = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)

    def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=None):
        h = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return type("Out", (), {"logits": self.head(h)})()


def test_padding_free_refuses_a_model_that_mixes_examples(tokenizer):
    with pytest.raises(ConfigError, match="does not keep packed examples apart"):
        check_packing_isolation(CumulativeMeanLM())
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    model.config._attn_implementation = "my_custom_kernel"
    with pytest.raises(ConfigError, match="my_custom_kernel"):
        check_packing_isolation(model)


def test_trainer_padding_free_matches_unpacked_training(tmp_path, varied_examples, tokenizer, fresh_accelerate_state):
    """Same examples, same loss tokens, isolated attention: padding-free training = unpacked training."""
    from accelerate.state import AcceleratorState, GradientState

    from llmkit.train import Trainer, TrainerConfig

    def run(name, packing, attention="per_example"):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        cfg = TrainerConfig(
            output_dir=str(tmp_path / name),
            max_steps=3,
            learning_rate=1e-3,
            lr_scheduler="constant",
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            seed=5,
            group_by_length=False,
            save_final_model=False,
            packing=packing,
            packing_max_length=1024,
            padding_free_attention=attention,
        )
        model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
        trainer = Trainer(cfg, model, tokenizer, varied_examples[:24])
        expected = PER_EXAMPLE_SDPA if packing == "padding_free" and attention == "per_example" else "sdpa"
        assert model.config._attn_implementation == expected
        trainer.train()
        rows = [r for r in trainer.history if "loss" in r]
        weights = {
            k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
        }
        return rows, weights

    rows_none, w_none = run("none", "none")
    rows_free, w_free = run("free", "padding_free")
    rows_masked, _ = run("free_masked", "padding_free", attention="model")
    rows_dyn, _ = run("dyn", "dynamic")
    assert [r["loss"] for r in rows_free] == pytest.approx([r["loss"] for r in rows_none], rel=1e-5)
    assert [r["loss"] for r in rows_masked] == pytest.approx([r["loss"] for r in rows_none], rel=1e-5)
    # Adam divides by sqrt(v): float noise on near-zero gradients can move a weight by a fraction of lr;
    # 1e-4 is 3% of the 3e-3 a weight can move in 3 steps, while mixed examples would differ by ~lr everywhere
    for key in w_none:
        torch.testing.assert_close(w_free[key], w_none[key], atol=1e-4, rtol=0)
    # every mode trains on the same loss tokens; packing removes padding
    assert (
        [r["num_tokens"] for r in rows_dyn]
        == [r["num_tokens"] for r in rows_none]
        == [r["num_tokens"] for r in rows_free]
    )
    assert all(r["padding_fraction"] == 0.0 and r["examples_per_row"] == 4.0 for r in rows_free)
    assert sum(d["padding_fraction"] for d in rows_dyn) < sum(n["padding_fraction"] for n in rows_none)
    # the faithful Dynamic Pack lets packed examples attend to each other, so its loss differs
    assert [r["loss"] for r in rows_dyn] != pytest.approx([r["loss"] for r in rows_none], rel=1e-5)


@pytest.mark.integration
@torch.no_grad()
def test_padding_free_equals_unpacked_on_smollm2(varied_examples):
    """float64 shows the isolation is exact (atol 1e-5); float32 agrees to rounding (logits are ~±30)."""
    from llmkit.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(ModelConfig(name="smollm2-135m-instruct"))
    model.eval()
    examples = varied_examples[:4]
    for dtype, atol, per_example in (
        (torch.float64, 1e-5, False),
        (torch.float32, 2e-4, False),
        (torch.float64, 1e-5, True),
    ):
        model.to(dtype)
        if per_example:
            assert use_per_example_attention(model)
        ref_logits, ref_losses = per_example_outputs(model, examples)
        got_logits, got_losses = padding_free_outputs(model, examples)
        for r, g in zip(ref_logits, got_logits):
            torch.testing.assert_close(g, r, atol=atol, rtol=0)
        torch.testing.assert_close(torch.stack(got_losses), torch.stack(ref_losses), atol=atol, rtol=0)
