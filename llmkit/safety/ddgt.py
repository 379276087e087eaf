"""DDGT (distribution-guided decoding): steer the base model toward the safety twin where they disagree.

At each decoding step with next-token distributions p_base and p_twin (docs/methods/safethinker.md §3; the exact rule is
UNVERIFIED, this follows SafeDecoding, Xu et al. 2024):
1. c = cos(p_base, p_twin). If c ≥ `threshold`, the models agree: keep p_base unchanged.
2. Otherwise build the candidate pool: the intersection of the base and twin top-k, with k grown from
   `top_k` until at least `min_common` tokens are common (SafeDecoding's rule).
3. On the pool, p = p_base + α (p_twin − p_base), negatives clamped to 0, renormalised; tokens outside the
   pool get 0. If every pool entry clamps to 0, p_twin restricted to the pool is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DDGTConfig:
    """threshold: cosine below which DDGT steers; alpha: SafeDecoding α; top_k / min_common: the pool;
    max_steps: steer only the first `max_steps` generated tokens (None = every step)."""

    threshold: float = 0.9
    alpha: float = 3.0
    top_k: int = 10
    min_common: int = 5
    max_steps: int | None = None

    def __post_init__(self):
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"ddgt threshold is a cosine in [-1, 1], got {self.threshold}")
        if self.alpha < 0:
            raise ValueError(f"ddgt alpha must be >= 0, got {self.alpha}")
        if self.top_k < 1 or self.min_common < 1:
            raise ValueError(f"ddgt top_k and min_common must be >= 1, got {self.top_k}, {self.min_common}")


def cosine(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the last dimension (b, V) × (b, V) → (b,)."""
    return torch.nn.functional.cosine_similarity(p.double(), q.double(), dim=-1)


def common_topk_mask(p_base: torch.Tensor, p_twin: torch.Tensor, top_k: int, min_common: int) -> torch.Tensor:
    """Bool (b, V): tokens in both top-k sets, k = the smallest k ≥ `top_k` giving ≥ `min_common` common tokens.

    A token is in both top-k sets exactly when k > max(rank_base, rank_twin) (ranks from 0, ties broken by
    token id), so the needed k is the `min_common`-th smallest of those maxima, plus one.
    """
    if p_base.shape != p_twin.shape or p_base.ndim != 2:
        raise ValueError(
            f"need two (batch, vocab) distributions of one shape, got {tuple(p_base.shape)} and {tuple(p_twin.shape)}"
        )
    vocab = p_base.shape[-1]
    need = min(min_common, vocab)

    def ranks(p: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(-p.double(), dim=-1, stable=True)
        r = torch.empty_like(order)
        r.scatter_(-1, order, torch.arange(vocab, device=p.device).expand_as(order))
        return r

    joint = torch.maximum(ranks(p_base), ranks(p_twin))  # (b, V)
    kth = torch.kthvalue(joint, need, dim=-1).values + 1  # (b,)
    k = torch.clamp(kth, min=min(top_k, vocab))
    return joint < k.unsqueeze(-1)


def ddgt_mix(
    p_base: torch.Tensor, p_twin: torch.Tensor, settings: DDGTConfig = DDGTConfig()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p, steered, cos) for next-token distributions (b, V): p is the distribution to decode from.

    Rows with cos ≥ threshold return p_base unchanged (steered False); the others the SafeDecoding mix over
    the common top-k pool (see the module docstring).
    """
    if p_base.shape != p_twin.shape or p_base.ndim != 2:
        raise ValueError(
            f"need two (batch, vocab) distributions of one shape, got {tuple(p_base.shape)} and {tuple(p_twin.shape)}"
        )
    pb, pt = p_base.double(), p_twin.double()
    cos = cosine(pb, pt)
    steered = cos < settings.threshold
    pool = common_topk_mask(pb, pt, settings.top_k, settings.min_common)
    mixed = torch.where(pool, (pb + settings.alpha * (pt - pb)).clamp_min(0.0), torch.zeros_like(pb))
    total = mixed.sum(-1, keepdim=True)
    fallback = torch.where(pool, pt, torch.zeros_like(pt))
    fallback = fallback / fallback.sum(-1, keepdim=True).clamp_min(1e-300)
    mixed = torch.where(total > 0, mixed / total.clamp_min(1e-300), fallback)
    p = torch.where(steered.unsqueeze(-1), mixed, pb)
    return p.to(p_base.dtype), steered, cos


class DDGTLogitsProcessor:
    """A transformers LogitsProcessor for `base.generate(...)`: runs the twin on the same ids and returns
    log(ddgt_mix(softmax(base), softmax(twin))) as scores (−inf outside the pool when steering).

    The twin is run without a KV cache on the whole sequence each step (simple and correct with left
    padding: positions come from the attention mask). `prompt_attention_mask` is the mask passed to
    generate. Counts: `steps`, `steered` (per row), for the extra-forward-pass report.
    """

    def __init__(self, twin, prompt_attention_mask: torch.Tensor, settings: DDGTConfig = DDGTConfig()):
        self.twin, self.settings = twin.eval(), settings
        self.prompt_mask = prompt_attention_mask
        self.steps = 0
        self.steered = torch.zeros(prompt_attention_mask.shape[0], dtype=torch.long)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores of the next token for each row of `input_ids`."""
        if self.settings.max_steps is not None and self.steps >= self.settings.max_steps:
            self.steps += 1
            return scores
        rows = input_ids.shape[0]
        if rows % self.prompt_mask.shape[0]:
            raise ValueError("DDGTLogitsProcessor: batch does not match the prompt attention mask")
        mask = self.prompt_mask.repeat_interleave(rows // self.prompt_mask.shape[0], 0).to(input_ids.device)
        new = input_ids.shape[1] - mask.shape[1]
        mask = torch.cat([mask, torch.ones(rows, new, dtype=mask.dtype, device=mask.device)], 1)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        twin_logits = self.twin(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1, :]
        vocab = min(scores.shape[-1], twin_logits.shape[-1])
        p_base = torch.softmax(scores[:, :vocab].double(), -1)
        p_twin = torch.softmax(twin_logits[:, :vocab].double(), -1)
        p, steered, _ = ddgt_mix(p_base, p_twin, self.settings)
        self.steps += 1
        if self.steered.shape[0] == rows:
            self.steered += steered.long().cpu()
        out = torch.full_like(scores, float("-inf"))
        out[:, :vocab] = torch.log(p).to(scores.dtype)
        return out


@dataclass
class DDGTResult:
    """One decode: generated token ids, text, how many steps were steered, total steps."""

    token_ids: list[int]
    text: str
    steered_steps: int
    steps: int


@torch.no_grad()
def ddgt_generate(
    base,
    twin,
    tokenizer,
    prompt_ids: list[int],
    max_new_tokens: int,
    settings: DDGTConfig = DDGTConfig(),
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    eos_ids: set[int] | None = None,
) -> DDGTResult:
    """Decode one prompt with DDGT: both models keep their own KV cache, one forward each per token.

    Greedy when `temperature` is 0, else sampling from the DDGT distribution of softmax(logits / T).
    """
    if not prompt_ids:
        raise ValueError("ddgt_generate needs a non-empty prompt")
    if eos_ids is None:
        eos_ids = {tokenizer.eos_token_id}
    device = next(base.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    out_b = base(input_ids=ids, use_cache=True)
    out_t = twin(input_ids=ids, use_cache=True)
    generated: list[int] = []
    steered_steps = 0
    for step in range(max_new_tokens):
        lb, lt = out_b.logits[:, -1, :].double(), out_t.logits[:, -1, :].double()
        vocab = min(lb.shape[-1], lt.shape[-1])
        lb, lt = lb[:, :vocab], lt[:, :vocab]
        t = temperature if temperature > 0 else 1.0
        pb, pt = torch.softmax(lb / t, -1), torch.softmax(lt / t, -1)
        if settings.max_steps is None or step < settings.max_steps:
            p, steered, _ = ddgt_mix(pb, pt, settings)
            steered_steps += int(steered.item())
        else:
            p = pb
        if temperature > 0:
            token = int(torch.multinomial(p[0].float(), 1, generator=generator).item())
        else:
            token = int(torch.argmax(p[0]).item())
        generated.append(token)
        if token in eos_ids:
            break
        nxt = torch.tensor([[token]], device=device)
        out_b = base(input_ids=nxt, past_key_values=out_b.past_key_values, use_cache=True)
        out_t = twin(input_ids=nxt, past_key_values=out_t.past_key_values, use_cache=True)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    return DDGTResult(generated, text, steered_steps, len(generated))
