"""Per-example attention for padding-free packed rows: a varlen kernel made of ordinary SDPA calls.

Padding-free packing (`llmkit.data.packing`) puts a micro-batch in one row with position ids that
restart at 0 for every example. With ``sdpa`` or ``eager``, transformers isolates the examples with a
block-diagonal causal mask over the *whole* row, so attention still costs (Σ Lᵢ)² in time and the mask
(Σ Lᵢ)² in memory, and SDPA's fused kernels give way to the masked path. FlashAttention's varlen
kernel (GPU, ``flash_attention_2/3``) instead works on each example alone, Σ Lᵢ².

`PER_EXAMPLE_SDPA` (``"llmkit_per_example_sdpa"``) does the same with plain PyTorch: the row is cut at
the position-id restarts and each example runs causal SDPA on its own slice; the results are
concatenated. It is registered with transformers' `AttentionInterface` and `AttentionMaskInterface`,
so a model switched to it (`use_per_example_attention`) needs no other change. Anything that is not a
padding-free row (a 2-D padding mask, a KV cache, decoding, one example per row) goes to transformers'
own ``sdpa`` with the mask ``sdpa`` would have built, so the model stays usable for evaluation and
generation.

Only for ``sdpa`` models whose causal mask has no other ingredient (no sliding window, no bidirectional
image tokens): `use_per_example_attention` checks the architecture against `PER_EXAMPLE_MODEL_TYPES` and
the config (``eager`` is left alone: it is chosen for its attention weights), and the trainer's
`check_packing_isolation` compares packed and separate logits before any step.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

PER_EXAMPLE_SDPA = "llmkit_per_example_sdpa"
# Decoder-only architectures whose attention mask is exactly "causal" (plus padding); for these the
# mask can be rebuilt from position ids alone. Others keep the model's own block-diagonal mask.
PER_EXAMPLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "granite")


def segment_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the examples in one packed row: a new example starts wherever the position id does
    not continue the previous one by exactly 1 (transformers' rule, `find_packed_sequence_indices`).

    `position_ids` has shape (seq,) or (1, seq). The lengths sum to seq.

    >>> segment_lengths(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    [3, 2, 4]
    """
    positions = position_ids.reshape(-1)
    if positions.numel() == 0:
        return []
    starts = torch.nonzero(positions[1:] - positions[:-1] != 1).reshape(-1) + 1
    bounds = [0, *starts.tolist(), positions.numel()]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def per_example_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: list[int],
    scaling: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention within each example of a packed row, never across examples.

    query: (1, heads, seq, head_dim); key/value: (1, kv_heads, seq, head_dim) with kv_heads dividing heads
    (grouped-query attention); `lengths` sums to seq. Returns (1, heads, seq, head_dim), equal to SDPA with
    a block-diagonal causal mask but computing only Σ lengths² scores.
    """
    if sum(lengths) != query.shape[2]:
        raise ValueError(f"segment lengths sum to {sum(lengths)}, the row has {query.shape[2]} tokens")
    gqa = key.shape[1] != query.shape[1]
    outputs = []
    start = 0
    for length in lengths:
        end = start + length
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                is_causal=length > 1,
                scale=scaling,
                enable_gqa=gqa,
            )
        )
        start = end
    return torch.cat(outputs, dim=2)


def per_example_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: per-example SDPA on a packed row, else plain ``sdpa``.

    Returns (batch, seq, heads, head_dim) as every transformers attention function does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    single_row = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    if single_row and (position_ids is None or not getattr(module, "is_causal", True)):
        # `per_example_sdpa_mask` returned no mask for this row, trusting this function to split it; without
        # position ids (or with a non-causal module) it cannot, and plain SDPA could mix packed examples.
        raise RuntimeError(
            f"{PER_EXAMPLE_SDPA}: a single unpadded row reached attention without position ids or with a non-causal "
            f"module ({type(module).__name__}); this model does not suit per-example attention"
        )
    # (segment_lengths runs once per layer: a few microseconds on CPU; GPUs use FlashAttention varlen instead)
    lengths = segment_lengths(position_ids) if single_row else []
    if len(lengths) < 2 or sum(lengths) != query.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    output = per_example_causal_attention(query, key, value, lengths, scaling=scaling, dropout=dropout)
    return output.transpose(1, 2).contiguous(), None


def per_example_sdpa_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
):
    """Mask-interface function: no mask for an unpadded single row without cache (the attention function
    rebuilds the causal-per-example pattern from the position ids); otherwise what ``sdpa`` builds."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and batch_size == 1 and q_length == kv_length and q_offset == 0 and kv_offset == 0:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def register_per_example_attention() -> None:
    """Register `PER_EXAMPLE_SDPA` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PER_EXAMPLE_SDPA, per_example_sdpa_forward)
    AttentionMaskInterface.register(PER_EXAMPLE_SDPA, per_example_sdpa_mask)


def per_example_attention_unsupported(model) -> str | None:
    """Why this model cannot use per-example attention (None when it can)."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    impl = getattr(config, "_attn_implementation", None)
    if impl == "eager":
        return "its attention is 'eager' (kept as chosen, e.g. for attention weights; sdpa switches)"
    if impl not in ("sdpa", PER_EXAMPLE_SDPA):
        return f"its attention is '{impl}' (FlashAttention and flex already work per example)"
    model_type = getattr(config, "model_type", None)
    if model_type not in PER_EXAMPLE_MODEL_TYPES:
        return f"model type '{model_type}' is not among {list(PER_EXAMPLE_MODEL_TYPES)}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "it uses sliding-window attention"
    other_layers = sorted({t for t in getattr(config, "layer_types", None) or [] if t != "full_attention"})
    if other_layers:
        return f"it has {', '.join(other_layers)} layers"
    if not getattr(config, "is_causal", True):
        return "its attention is not causal"
    return None


def use_per_example_attention(model) -> bool:
    """Switch `model` (or the base model under a peft wrapper) to per-example SDPA when it qualifies.

    Returns True when switched; otherwise logs why not and leaves the model as it is (the model's own
    block-diagonal mask still isolates the examples, at (Σ Lᵢ)² cost).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    reason = per_example_attention_unsupported(base)
    if reason is not None:
        logger.info("padding-free packing keeps the model's own attention: %s", reason)
        return False
    register_per_example_attention()
    if base.config._attn_implementation != PER_EXAMPLE_SDPA:
        base.set_attn_implementation(PER_EXAMPLE_SDPA)
    return base.config._attn_implementation == PER_EXAMPLE_SDPA


# ---------------------------------------------------------------------------------------------------------------
# Padding-free attention on CUDA through PyTorch's own kernels (issue 24 item 1).
#
# Measured on an H200 for one packed batch (64 examples, 9,165 tokens, fwd + bwd, ../shared/docs/GPU-FACTS.md):
# varlen_attn 0.87 ms, flex attention 1.16 ms, the per-example SDPA loop 16 ms. On CPU varlen_attn has no kernel
# and flex attention has no backward, so the per-example loop stays the CPU path.
# ---------------------------------------------------------------------------------------------------------------

VARLEN_SDPA = "llmkit_varlen"
FLASH_ATTENTION = "flash_attention_2"  # transformers' own integration (needs the flash-attn package)
FLEX_ATTENTION = "flex_attention"  # transformers' own integration; its mask isolates packed rows from position ids
PADDING_FREE_PATHS = (FLASH_ATTENTION, VARLEN_SDPA, FLEX_ATTENTION, PER_EXAMPLE_SDPA)
# varlen_attn is FlashAttention underneath: half precision only (float32 rows take the per-example loop).
VARLEN_DTYPES = (torch.float16, torch.bfloat16)


def select_padding_free_path(device_type: str, flash_attn_installed: bool, has_varlen: bool, has_flex: bool) -> str:
    """The fastest attention that keeps packed examples apart on this machine (a pure function).

    CUDA: flash-attn's ``flash_attention_2`` when installed, else torch's `varlen_attn` (`VARLEN_SDPA`),
    else flex attention with a document mask, else the per-example SDPA loop. Any other device: the
    per-example loop (varlen_attn has no CPU kernel and flex attention no CPU backward in torch 2.13).
    """
    if device_type != "cuda":
        return PER_EXAMPLE_SDPA
    if flash_attn_installed:
        return FLASH_ATTENTION
    if has_varlen:
        return VARLEN_SDPA
    if has_flex:
        return FLEX_ATTENTION
    return PER_EXAMPLE_SDPA


def detect_padding_free_features() -> dict[str, bool]:
    """What this install offers for `select_padding_free_path` (keyword arguments except device_type)."""
    import importlib.util

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.10)

        has_varlen = True
    except ImportError:
        has_varlen = False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        has_flex = True
    except ImportError:
        has_flex = False
    return {
        "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None,
        "has_varlen": has_varlen,
        "has_flex": has_flex,
    }


def cu_seqlens(lengths: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Cumulative example boundaries of a packed row as varlen kernels want them: int32, [0, l0, l0+l1, ...].

    >>> cu_seqlens([3, 2, 4]).tolist()
    [0, 3, 5, 9]
    """
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Example index of every token of a packed row (same restart rule as `segment_lengths`).

    >>> document_ids(torch.tensor([[0, 1, 2, 0, 1, 0]])).tolist()
    [0, 0, 0, 1, 1, 2]
    """
    positions = position_ids.reshape(-1)
    if positions.numel() == 0:
        return positions.new_zeros(0)
    restarts = (positions[1:] - positions[:-1] != 1).to(torch.long)
    return torch.cat([restarts.new_zeros(1), restarts.cumsum(0)])


def document_causal_mask_mod(doc_ids: torch.Tensor):
    """Flex-attention mask_mod: a query sees a key of its own example at or before its position."""

    def mask_mod(batch_idx, head_idx, q_idx, kv_idx):
        return (doc_ids[q_idx] == doc_ids[kv_idx]) & (q_idx >= kv_idx)

    return mask_mod


def document_block_mask(position_ids: torch.Tensor, block_size: int = 128):
    """Flex-attention BlockMask for a packed row: causal within each example, nothing across examples."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = document_ids(position_ids).to(position_ids.device)
    n = doc.numel()
    return create_block_mask(
        document_causal_mask_mod(doc), None, None, n, n, device=position_ids.device, BLOCK_SIZE=block_size
    )


def _torch_varlen_attn(
    query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
):
    """torch's varlen_attn, adapted to the keywords this torch has (GPU boxes may run an older torch than our
    pin): without `enable_gqa` the KV heads are repeated, without `scale` the query is pre-scaled, and without
    `window_size` causality is `is_causal=True` (torch 2.10's spelling)."""
    import inspect
    import math

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {}
    if enable_gqa and "enable_gqa" not in params:
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    elif enable_gqa:
        kwargs["enable_gqa"] = True
    if scale is not None and "scale" not in params:
        query = query * (scale * math.sqrt(query.shape[-1]))  # the kernel's default is 1/sqrt(head_dim)
    elif scale is not None:
        kwargs["scale"] = scale
    if "window_size" in params:
        kwargs["window_size"] = window_size
    elif window_size == (-1, 0):
        kwargs["is_causal"] = True
    elif window_size != (-1, -1):
        raise ValueError(f"this torch's varlen_attn has no window_size; cannot run window {window_size}")
    return varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, **kwargs)


# Looked up at call time so tests can run the wiring on CPU with a reference kernel of the same signature.
VARLEN_KERNEL = _torch_varlen_attn


def varlen_kernel_applies(query: torch.Tensor, dropout: float) -> bool:
    """Whether torch's varlen kernel can take this call: CUDA, half precision, no dropout (it has none)."""
    return query.is_cuda and query.dtype in VARLEN_DTYPES and dropout == 0.0


_varlen_fallback_warned = False


def _warn_varlen_fallback(dtype: torch.dtype, dropout: float) -> None:
    """Say once that CUDA calls are taking the slow per-example loop (float32 without autocast, or dropout)."""
    global _varlen_fallback_warned
    if not _varlen_fallback_warned:
        _varlen_fallback_warned = True
        logger.warning(
            "%s: varlen_attn needs fp16/bf16 and no dropout (got %s, dropout %s); these calls use per-example SDPA "
            "(use mixed_precision bf16 for the fast path)",
            VARLEN_SDPA,
            dtype,
            dropout,
        )


def check_varlen_kernel(device: torch.device | str = "cuda", atol: float = 2e-2) -> float:
    """Run torch's varlen_attn once on a small bf16 packed row (GQA, 3 examples) against per-example SDPA.

    Returns the largest gap; raises RuntimeError when it exceeds `atol`. The trainer's logit check runs in the
    parameters' dtype, which in float32 takes the per-example fallback, so this is what proves the kernel itself.
    """
    lengths = [5, 1, 12]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, sum(lengths), 64, generator=gen)
    k, v = (torch.randn(1, 2, sum(lengths), 64, generator=gen) for _ in range(2))
    reference = per_example_causal_attention(q, k, v, lengths)[0].transpose(0, 1)
    q, k, v = (t.to(device=device, dtype=torch.bfloat16)[0].transpose(0, 1) for t in (q, k, v))
    cu = cu_seqlens(lengths, device=device)
    got = VARLEN_KERNEL(q, k, v, cu, cu, max(lengths), max(lengths), window_size=(-1, 0), enable_gqa=True)
    gap = float((got.float().cpu() - reference).abs().max())
    if not gap <= atol:
        raise RuntimeError(f"{VARLEN_SDPA}: torch varlen_attn differs from per-example SDPA by {gap:.3g} > {atol:g}")
    return gap


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: a packed row through torch's varlen_attn (cu_seqlens).

    Calls the kernel can't take (CPU, float32, dropout) and anything that is not a padding-free row go to
    `per_example_sdpa_forward`, which itself hands non-packed calls to transformers' ``sdpa``.
    Returns (batch, seq, heads, head_dim).
    """
    position_ids = kwargs.get("position_ids")
    single_row = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    if not (single_row and position_ids is not None and getattr(module, "is_causal", True)):
        return per_example_sdpa_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if not varlen_kernel_applies(query, dropout if module.training else 0.0):
        if query.is_cuda and torch.is_grad_enabled():  # (the start-up logit check runs no-grad in fp32: no warning)
            _warn_varlen_fallback(query.dtype, dropout if module.training else 0.0)
        return per_example_sdpa_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    lengths = segment_lengths(position_ids)  # one host sync per layer (max length must be a Python int)
    cu = cu_seqlens(lengths, device=query.device)
    # (1, heads, seq, dim) -> (seq, heads, dim): the varlen layout.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = VARLEN_KERNEL(
        q,
        k,
        v,
        cu,
        cu,
        max(lengths),
        max(lengths),
        scale=scaling,
        window_size=(-1, 0),  # (-1, 0) = causal
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return out.unsqueeze(0), None  # (1, seq, heads, dim)


def register_varlen_attention() -> None:
    """Register `VARLEN_SDPA` with transformers (idempotent); its mask is the per-example one (none for a
    packed row, ``sdpa``'s otherwise)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
    AttentionMaskInterface.register(VARLEN_SDPA, per_example_sdpa_mask)


def use_padding_free_attention(model, path: str) -> str | None:
    """Switch `model` (or the base model under peft) to the padding-free attention `path`.

    Returns the implementation now in use, or None when the model does not qualify (it keeps its own
    attention, whose block-diagonal mask still isolates examples at (Σ Lᵢ)² cost; the reason is logged).
    """
    if path not in PADDING_FREE_PATHS:
        raise ValueError(f"unknown padding-free attention path '{path}'; expected one of {list(PADDING_FREE_PATHS)}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if impl in (FLASH_ATTENTION, "flash_attention_3", FLEX_ATTENTION):
        return impl  # chosen at load and already isolating packed rows: kept
    reason = per_example_attention_unsupported(base)
    if reason is not None and impl not in (PER_EXAMPLE_SDPA, VARLEN_SDPA):
        logger.info("padding-free packing keeps the model's own attention: %s", reason)
        return None
    if path == PER_EXAMPLE_SDPA:
        register_per_example_attention()
    elif path == VARLEN_SDPA:
        register_varlen_attention()
        device = next(base.parameters()).device
        if device.type == "cuda":
            logger.info(
                "%s: varlen_attn matches per-example SDPA in bf16 (max gap %.2e)",
                VARLEN_SDPA,
                check_varlen_kernel(device),
            )
    if base.config._attn_implementation != path:
        base.set_attn_implementation(path)
    return base.config._attn_implementation


# trainer.padding_free_attention values that name one path (`auto` selects; `model` keeps the model's own).
PADDING_FREE_SETTINGS = {
    "per_example": PER_EXAMPLE_SDPA,
    "varlen": VARLEN_SDPA,
    "flex": FLEX_ATTENTION,
    "flash": FLASH_ATTENTION,
}


def resolve_padding_free_path(setting: str, device_type: str) -> str:
    """The attention path for `trainer.padding_free_attention` (`auto` or one of `PADDING_FREE_SETTINGS`)."""
    if setting == "auto":
        return select_padding_free_path(device_type, **detect_padding_free_features())
    if setting not in PADDING_FREE_SETTINGS:
        raise ValueError(
            f"trainer.padding_free_attention: '{setting}' is not auto, model or one of {list(PADDING_FREE_SETTINGS)}"
        )
    return PADDING_FREE_SETTINGS[setting]
