"""Collators that put several examples in one row: the paper's Dynamic Pack and correct padding-free packing.

Three ways to turn one micro-batch of tokenised examples into tensors (`TrainerConfig.packing`):

* ``none``: one example per row, right-padded to the longest (`llmkit.data.sft.collate`).
* ``dynamic``: CodeACT's Dynamic Pack, reproduced as its code runs. The micro-batch is sorted by
  length (ascending), packed greedily with next-fit into rows of at most ``max_length`` tokens, and
  the rows are right-padded to the longest row. Position ids continue across the examples of a row and
  the attention is causal over the whole row, so a later example attends to the earlier ones in its
  row (naive packing). That is the paper's method; it is not equivalent to unpacked training.
* ``padding_free``: correct by construction. All examples of the micro-batch become one row with no
  padding at all; position ids restart at 0 for every example, and the attention never crosses an
  example boundary: transformers turns restarting position ids into FlashAttention varlen boundaries
  (``flash_attention_2/3``) or into a block-diagonal causal mask (``sdpa``, ``eager``, ``flex_attention``),
  when no 2-D attention mask and no KV cache are passed (`model_forward_inputs` sets
  ``use_cache=False``; with a cache the detection is skipped and the examples silently mix).
  `check_packing_isolation` proves the isolation for a given model before training, and refuses a
  model whose attention does not isolate the examples. With sdpa/eager the block-diagonal mask spans
  the whole row ((Σ Lᵢ)² work); the trainer therefore switches suitable models to llmkit's per-example
  SDPA (`llmkit.train.packed_attention`, Σ Lᵢ² work, the CPU counterpart of FlashAttention varlen).

In every mode the first label of each example is ignored (-100). Unpacked, the first token is never
predicted (nothing precedes it); packed, it would be predicted from the previous example's last token.
Masking it keeps the loss tokens of an optimizer step identical in all three modes, so `none`,
`dynamic` and `padding_free` optimise the same objective over the same tokens (`dynamic` differs only
in what each token can attend to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from llmkit.data.padding import pad_right
from llmkit.data.sft import IGNORE_INDEX, TokenizedExample, collate
from llmkit.errors import ConfigError

PackingMode = Literal["none", "dynamic", "padding_free"]
PACKING_MODES = ("none", "dynamic", "padding_free")
# Attention implementations that honour restarting position ids without a 2-D mask (see module doc).
# `llmkit_per_example_sdpa` is llmkit's CPU varlen path (`llmkit.train.packed_attention`).
ISOLATING_ATTENTION = (
    "sdpa",
    "eager",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
    "llmkit_per_example_sdpa",
    "llmkit_varlen",
)


def next_fit_packs(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Dynamic Pack's grouping: indices sorted by length (ascending, stable), then next-fit bins.

    Each bin is filled in order until the next example would overflow `max_length`; then a new bin
    starts (next-fit never goes back to an earlier bin). An example longer than `max_length` gets a
    bin of its own (the caller truncates examples to `max_length` first).

    >>> next_fit_packs([5, 3, 8, 2], 10)
    [[3, 1, 0], [2]]
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    packs: list[list[int]] = []
    used = 0
    for i in order:
        if packs and used + lengths[i] <= max_length:
            packs[-1].append(i)
            used += lengths[i]
        else:
            packs.append([i])
            used = lengths[i]
    return packs


def _example_tensors(example: TokenizedExample, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels truncated to `max_length`, with the first label masked (see module doc)."""
    ids = example.input_ids[:max_length]
    labels = [IGNORE_INDEX, *example.labels[1:max_length]]
    return ids, labels


def collate_dynamic_pack(examples: Sequence[TokenizedExample], pad_token_id: int, max_length: int) -> dict[str, Any]:
    """Dynamic Pack (faithful): next-fit packs of the sorted micro-batch, right-padded to the longest pack.

    Returns input_ids, attention_mask (1 on real tokens, 0 on padding), labels (-100 on padding and on
    each example's first token), and `num_examples`. No position_ids are returned, so they run 0..L-1
    across each row, as in the paper's code.
    """
    pieces = [_example_tensors(ex, max_length) for ex in examples]
    packs = next_fit_packs([len(ids) for ids, _ in pieces], max_length)
    rows = [([t for i in pack for t in pieces[i][0]], [t for i in pack for t in pieces[i][1]]) for pack in packs]
    batch = pad_right([ids for ids, _ in rows], pad_token_id, [labs for _, labs in rows])
    return {**batch, "num_examples": len(examples)}


def collate_padding_free(examples: Sequence[TokenizedExample], max_length: int) -> dict[str, Any]:
    """Padding-free packing: one row, no padding, position ids restarting at 0 for every example.

    Returns input_ids and labels of shape (1, total tokens), position_ids, `seq_lengths` (the example
    lengths in row order, for inspection) and `num_examples`. There is deliberately no
    attention_mask: transformers derives the example boundaries from the position ids only when the
    2-D mask is absent.
    """
    pieces = [_example_tensors(ex, max_length) for ex in examples]
    ids = [t for p, _ in pieces for t in p]
    labels = [t for _, p in pieces for t in p]
    positions = [pos for p, _ in pieces for pos in range(len(p))]
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "seq_lengths": torch.tensor([len(p) for p, _ in pieces], dtype=torch.long),
        "num_examples": len(examples),
    }


def collate_examples(
    examples: Sequence[TokenizedExample], pad_token_id: int, mode: PackingMode = "none", max_length: int = 2048
) -> dict[str, Any]:
    """Collate a micro-batch with the given packing mode (the one entry point the trainer uses)."""
    if mode == "none":
        batch = collate(list(examples), pad_token_id)
        batch["labels"][:, 0] = IGNORE_INDEX  # never a target after the shift; kept explicit for equal counts
        batch["num_examples"] = len(examples)
        return batch
    if mode == "dynamic":
        return collate_dynamic_pack(examples, pad_token_id, max_length)
    if mode == "padding_free":
        return collate_padding_free(examples, max_length)
    raise ConfigError(f"unknown packing mode '{mode}'; use one of {list(PACKING_MODES)}")


@dataclass
class PackingStats:
    """Slot accounting of collated micro-batches: how much of the computed tensor is real tokens."""

    rows: int = 0
    examples: int = 0
    real_tokens: int = 0
    slots: int = 0

    def add(self, batch: dict[str, Any]) -> None:
        """Count one collated batch.

        `num_real_tokens`, when the batch carries it, is used instead of summing the mask (the trainer counts
        on the host before the batch goes to the GPU). A filler row (`num_examples` 0, no real tokens; see
        token-budget batches) counts as padding and adds no row.
        """
        if batch["num_examples"]:
            self.rows += int(batch["input_ids"].shape[0])
        self.examples += int(batch["num_examples"])
        real = batch.get("num_real_tokens")
        if real is None:
            mask = batch.get("attention_mask")
            real = mask.sum() if mask is not None else batch["input_ids"].numel()
        self.real_tokens += int(real)
        self.slots += int(batch["input_ids"].numel())

    @property
    def padding_rate(self) -> float:
        """Pad positions ÷ all positions of the tensors (the paper's "padding rate")."""
        return 1.0 - self.real_tokens / self.slots if self.slots else 0.0

    @property
    def examples_per_row(self) -> float:
        """How many examples share a row on average (1.0 without packing)."""
        return self.examples / self.rows if self.rows else 0.0


def model_forward_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the model call for a collated batch (labels and bookkeeping left out).

    `use_cache=False` matters: with a KV cache object present, transformers skips the detection of
    packed examples from position ids and the examples of a padding-free row attend to each other.
    """
    keys = ("input_ids", "attention_mask", "position_ids")
    return {**{k: batch[k] for k in keys if k in batch}, "use_cache": False}


def check_attention_isolates(model) -> None:
    """Refuse padding-free packing for an attention implementation that cannot isolate examples.

    Raises ConfigError naming the implementation. The check is static; `check_packing_isolation`
    then verifies the behaviour numerically.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ISOLATING_ATTENTION:
        raise ConfigError(
            f"packing: padding_free needs an attention implementation that keeps packed examples apart "
            f"({', '.join(ISOLATING_ATTENTION)}); this model uses '{impl}'. Use packing: none, or load the "
            f"model with model.attn_implementation: sdpa"
        )


@torch.no_grad()
def check_packing_isolation(
    model, vocab_size: int | None = None, lengths: Sequence[int] = (5, 7), atol: float | None = None
) -> float:
    """Prove that this model keeps padding-free packed examples apart; return the largest logit gap.

    Runs two short random sequences packed in one row (restarting position ids, no mask) and each on
    its own, and compares the logits. Raises ConfigError when they differ by more than `atol` (default
    1e-4 in float32, 5e-2 in half precision): the model would let one example attend to another.
    """
    check_attention_isolates(model)
    param = next(model.parameters())
    vocab = vocab_size or model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, vocab, (n,), generator=generator).to(param.device) for n in lengths]
    was_training = model.training
    model.eval()
    try:
        packed = (
            model(
                input_ids=torch.cat(seqs)[None],
                position_ids=torch.cat([torch.arange(n, device=param.device) for n in lengths])[None],
                use_cache=False,
            )
            .logits[0]
            .float()
        )
        separate = torch.cat([model(input_ids=s[None], use_cache=False).logits[0].float() for s in seqs])
    finally:
        model.train(was_training)
    gap = float((packed - separate).abs().max())
    tolerance = atol if atol is not None else (1e-4 if param.dtype == torch.float32 else 5e-2)
    if not gap <= tolerance:
        raise ConfigError(
            f"packing: padding_free: this model does not keep packed examples apart (packed and separate "
            f"logits differ by {gap:.3g} > {tolerance:g}); its attention ignores restarting position ids. "
            f"Use packing: none"
        )
    return gap
