"""Padding-free attention paths (issue 24 item 1): selection, cu_seqlens / document-mask construction by hand,
and each path that runs here equals unpacked logits and gradients on a tiny random Llama (float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import llmkit.train.packed_attention as pa
from llmkit.data.packing import check_packing_isolation
from llmkit.models import ModelConfig, load_model
from llmkit.train.packed_attention import (
    FLASH_ATTENTION,
    FLEX_ATTENTION,
    PER_EXAMPLE_SDPA,
    VARLEN_SDPA,
    cu_seqlens,
    document_causal_mask_mod,
    document_ids,
    resolve_padding_free_path,
    select_padding_free_path,
    use_padding_free_attention,
)

LENGTHS = (5, 9, 1, 12)  # includes a one-token example (its only key is itself)


# ---- selection (pure) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, flash, varlen, flex, expected",
    [
        ("cuda", True, True, True, FLASH_ATTENTION),
        ("cuda", False, True, True, VARLEN_SDPA),
        ("cuda", False, False, True, FLEX_ATTENTION),
        ("cuda", False, False, False, PER_EXAMPLE_SDPA),
        ("cpu", True, True, True, PER_EXAMPLE_SDPA),  # no varlen kernel, no flex backward on CPU
        ("mps", False, True, True, PER_EXAMPLE_SDPA),
    ],
)
def test_select_padding_free_path(device, flash, varlen, flex, expected):
    assert select_padding_free_path(device, flash_attn_installed=flash, has_varlen=varlen, has_flex=flex) == expected


def test_resolve_padding_free_path():
    assert resolve_padding_free_path("auto", "cpu") == PER_EXAMPLE_SDPA
    assert resolve_padding_free_path("varlen", "cpu") == VARLEN_SDPA
    assert resolve_padding_free_path("flex", "cuda") == FLEX_ATTENTION
    assert resolve_padding_free_path("flash", "cuda") == FLASH_ATTENTION
    assert resolve_padding_free_path("per_example", "cuda") == PER_EXAMPLE_SDPA
    with pytest.raises(ValueError, match="'fast' is not auto"):
        resolve_padding_free_path("fast", "cuda")


def test_torch_here_has_varlen_and_flex():
    """torch 2.13 (our pin) ships both kernels; `auto` on CUDA would pick varlen_attn without flash-attn."""
    features = pa.detect_padding_free_features()
    assert features["has_varlen"] and features["has_flex"]


# ---- construction (pure) --------------------------------------------------------------------------------------


def test_cu_seqlens_by_hand():
    cu = cu_seqlens([3, 2, 4])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 5, 9]
    assert cu_seqlens([7]).tolist() == [0, 7]
    assert cu_seqlens([]).tolist() == [0]


def test_document_ids_by_hand():
    assert document_ids(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert document_ids(torch.tensor([0, 0, 0])).tolist() == [0, 1, 2]
    assert document_ids(torch.tensor([[0, 1, 5, 6]])).tolist() == [0, 0, 1, 1]  # any jump starts an example
    assert document_ids(torch.zeros(1, 0, dtype=torch.long)).tolist() == []


def test_document_causal_mask_by_hand():
    doc = document_ids(torch.tensor([0, 1, 0, 1, 2]))  # examples of 2 and 3 tokens
    q = torch.arange(5)[:, None]
    k = torch.arange(5)[None, :]
    dense = document_causal_mask_mod(doc)(0, 0, q, k).int().tolist()
    assert dense == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


def test_document_block_mask_matches_mask_mod():
    """The flex BlockMask built from position ids keeps exactly the hand-checked pattern (dense view)."""
    pos = torch.cat([torch.arange(n) for n in LENGTHS])
    bm = pa.document_block_mask(pos, block_size=8)
    n = pos.numel()
    dense = bm.to_dense()[0, 0].repeat_interleave(8, 0).repeat_interleave(8, 1)[:n, :n].bool()
    doc = document_ids(pos)
    exact = (doc[:, None] == doc[None, :]) & torch.ones(n, n).tril().bool()
    # block-level view: every block holding an allowed pair is kept, and blocks with none are skipped
    assert bool((dense | ~exact).all())
    assert bm.sparsity() > 0


# ---- numerics on a tiny random Llama ----------------------------------------------------------------------------


def reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """CPU stand-in with varlen_attn's signature and layout ((tokens, heads, dim)), built from plain SDPA."""
    assert window_size == (-1, 0), "the padding-free path must ask for causal attention"
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    assert max_q == max(cu_q[1:] - cu_q[:-1]).item()
    outs = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        o = F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1),
            k[a:b].transpose(0, 1),
            v[a:b].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=enable_gqa,
        )
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


@pytest.fixture
def cpu_varlen(monkeypatch):
    """Route llmkit's varlen path through `reference_varlen_attn` on CPU float32 (tests the wiring)."""
    monkeypatch.setattr(pa, "VARLEN_KERNEL", reference_varlen_attn)
    monkeypatch.setattr(pa, "varlen_kernel_applies", lambda query, dropout: True)


def tiny_model(tokenizer, path):
    torch.manual_seed(0)
    model = load_model(ModelConfig(name="tiny-random-llama", attn_implementation="sdpa"), vocab_size=len(tokenizer))
    reference = load_model(ModelConfig(name="tiny-random-llama", attn_implementation="sdpa"), vocab_size=len(tokenizer))
    reference.load_state_dict(model.state_dict())
    assert use_padding_free_attention(model, path) == path
    return model.float(), reference.float()


def packed_vs_separate(model, reference, vocab):
    """(packed logits, separate logits, packed grads, separate grads) for LENGTHS random sequences."""
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, vocab, (n,), generator=gen) for n in LENGTHS]
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]

    # the same loss both ways: sum of next-token losses within each example
    def loss_of(logits, seq):
        return F.cross_entropy(logits[:-1], seq[1:], reduction="sum")

    starts = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    sum(loss_of(packed[a:b], s) for a, b, s in zip(starts[:-1], starts[1:], seqs)).backward()
    separate_logits = []
    for s in seqs:
        out = reference(input_ids=s[None], use_cache=False).logits[0]
        separate_logits.append(out)
        loss_of(out, s).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}
    return packed.detach(), torch.cat(separate_logits).detach(), grads, ref_grads


def assert_matches(model, reference, vocab):
    packed, separate, grads, ref_grads = packed_vs_separate(model, reference, vocab)
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_varlen_wiring_equals_unpacked_logits_and_grads(tokenizer, cpu_varlen):
    model, reference = tiny_model(tokenizer, VARLEN_SDPA)
    assert model.config._attn_implementation == VARLEN_SDPA
    calls = []
    kernel = pa.VARLEN_KERNEL
    pa.VARLEN_KERNEL = lambda *a, **k: calls.append(1) or kernel(*a, **k)
    try:
        assert_matches(model, reference, len(tokenizer))
    finally:
        pa.VARLEN_KERNEL = kernel
    assert len(calls) == model.config.num_hidden_layers  # the packed forward went through the kernel, once a layer
    assert check_packing_isolation(model) < 1e-5


def test_varlen_falls_back_to_per_example_on_cpu(tokenizer):
    """Without the monkeypatch the kernel never sees a CPU/float32 call: the per-example loop answers, equal."""
    model, reference = tiny_model(tokenizer, VARLEN_SDPA)
    assert not pa.varlen_kernel_applies(torch.zeros(1, dtype=torch.float32), 0.0)
    assert_matches(model, reference, len(tokenizer))


def test_per_example_equals_unpacked_logits_and_grads(tokenizer):
    model, reference = tiny_model(tokenizer, PER_EXAMPLE_SDPA)
    assert_matches(model, reference, len(tokenizer))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention has no backward on CPU (torch 2.13)")
def test_flex_equals_unpacked_logits_and_grads_cuda(tokenizer):
    model, reference = tiny_model(tokenizer, FLEX_ATTENTION)
    assert_matches(model.cuda(), reference.cuda(), len(tokenizer))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn has no CPU kernel")
def test_real_varlen_kernel_equals_reference_cuda():
    """torch's varlen_attn (bf16, GQA 4/2 heads) against the SDPA reference on the same packed row."""
    gen = torch.Generator().manual_seed(0)
    n = sum(LENGTHS)
    q = torch.randn(n, 4, 64, generator=gen).cuda().bfloat16()
    k, v = (torch.randn(n, 2, 64, generator=gen).cuda().bfloat16() for _ in range(2))
    cu = cu_seqlens(list(LENGTHS), device="cuda")
    got = pa._torch_varlen_attn(q, k, v, cu, cu, max(LENGTHS), max(LENGTHS), window_size=(-1, 0), enable_gqa=True)
    want = reference_varlen_attn(
        q.float(), k.float(), v.float(), cu, cu, max(LENGTHS), max(LENGTHS), window_size=(-1, 0), enable_gqa=True
    )
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=0)


def test_flex_forward_equals_unpacked_logits_on_cpu(tokenizer):
    """transformers' flex integration isolates packed rows from position ids (forward; CPU has no flex backward)."""
    model, reference = tiny_model(tokenizer, FLEX_ATTENTION)
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, len(tokenizer), (n,), generator=gen) for n in LENGTHS]
    pos = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    with torch.no_grad():
        packed = model(input_ids=torch.cat(seqs)[None], position_ids=pos, use_cache=False).logits[0]
        separate = torch.cat([reference(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=0)


def test_use_padding_free_attention_rejects_unknown_path(tokenizer):
    model = load_model(ModelConfig(name="tiny-random-llama", attn_implementation="sdpa"), vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="unknown padding-free attention path 'fast'"):
        use_padding_free_attention(model, "fast")
    # eager is kept as chosen (attention weights): no switch, None
    eager = load_model(ModelConfig(name="tiny-random-llama", attn_implementation="eager"), vocab_size=len(tokenizer))
    assert use_padding_free_attention(eager, VARLEN_SDPA) is None


def test_check_varlen_kernel_with_reference_kernel(monkeypatch):
    """The start-up kernel check passes for a correct kernel and names the gap for a wrong one (CPU stand-ins)."""
    monkeypatch.setattr(
        pa, "VARLEN_KERNEL", lambda *a, **k: reference_varlen_attn(*(t.float() for t in a[:3]), *a[3:], **k)
    )
    assert pa.check_varlen_kernel("cpu") < 2e-2  # bf16 inputs vs float32 reference
    monkeypatch.setattr(pa, "VARLEN_KERNEL", lambda q, *a, **k: torch.zeros_like(q))
    with pytest.raises(RuntimeError, match="differs from per-example SDPA by"):
        pa.check_varlen_kernel("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn has no CPU kernel")
def test_check_varlen_kernel_cuda():
    assert pa.check_varlen_kernel("cuda") < 2e-2


@pytest.mark.parametrize("have", [("enable_gqa", "scale", "window_size"), ()])
def test_torch_varlen_adapter_matches_reference(monkeypatch, have):
    """The adapter gives the same result whether this torch's varlen_attn has the new keywords or not (a CPU
    fake of varlen_attn with either signature, checked against the per-example reference)."""
    import torch.nn.attention.varlen as varlen_module

    def new_api(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return reference_varlen_attn(
            q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa
        )

    def old_api(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False):
        assert is_causal and k.shape[1] == q.shape[1]
        return reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, 0))

    monkeypatch.setattr(varlen_module, "varlen_attn", new_api if have else old_api)
    gen = torch.Generator().manual_seed(0)
    n = sum(LENGTHS)
    q = torch.randn(n, 4, 16, generator=gen)
    k, v = (torch.randn(n, 2, 16, generator=gen) for _ in range(2))
    cu = cu_seqlens(list(LENGTHS))
    got = pa._torch_varlen_attn(q, k, v, cu, cu, 12, 12, scale=0.3, window_size=(-1, 0), enable_gqa=True)
    want = new_api(q, k, v, cu, cu, 12, 12, scale=0.3, window_size=(-1, 0), enable_gqa=True)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
