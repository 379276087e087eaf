"""The hidden-state probe's head trained on the shared trainer (docs/methods/safethinker.md §1).

The LLM is frozen and stays outside the trainer: the trainer's model (what the optimizer, the clipping,
the checkpoints and the final save see) is the head alone, `ProbeHead` (a linear layer on standardized
mean-pooled hidden states). Each example is one chat-templated prompt (`render_prompt`, exactly the
tokens `HiddenStateProbeGateway.features` scores) whose labels are -100 except the last position, which
holds the class (1 harmful, 0 benign): the trainer's batching, per-step "target token" count (= examples
in the step), optimizer, scheduler, logging and atomic checkpoints are reused unchanged. `compute_loss`
runs the frozen LLM under `no_grad`, mean-pools layer `layer` over the prompt, applies the head and
returns the class-balanced BCE sum (`balanced_bce_sum`); the trainer divides by the step's example count.

The LLM is frozen and deterministic (eval mode), so a prompt's pooled state never changes: with
`cache_features` (default) it is computed once per prompt and reused in later epochs. With `standardize`
(default) the head sees (x − mean) / std of the training features (one LLM pass before step 0; it fills
the cache): Adam on raw SmolLM2 states, whose coordinates differ in scale by orders of magnitude, is
badly conditioned. `ProbeHead.raw_weights` folds the standardization back, so the gateway keeps a plain
(w, b) on raw pooled states.

    cfg = load_config(ProbeTrainingConfig, "probe.yaml", ["--trainer.learning_rate", "0.02"])
    w, b, trainer = train_probe_head(model, tokenizer, texts, labels, cfg)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.data.packing import collate_examples
from llmkit.data.sft import IGNORE_INDEX, TokenizedExample
from llmkit.errors import ConfigError, DataError
from llmkit.io import atomic_write_json
from llmkit.safety.probe_features import encode_probe_prompts, mean_pool
from llmkit.train.trainer import Trainer, TrainerConfig

# ----- pure pieces ---------------------------------------------------------------------------------------


def class_balance_weights(labels: Sequence[int]) -> tuple[float, float]:
    """(pos_weight, neg_weight) = (n / (2 n_pos), n / (2 n_neg)): both classes weigh n/2 in total
    (as `fit_logistic`)."""
    y = np.asarray(labels)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos + n_neg != len(y):
        raise DataError("probe labels must be 0 (benign) or 1 (harmful)")
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"the probe needs both classes, got {n_pos} harmful and {n_neg} benign examples")
    return len(y) / (2 * n_pos), len(y) / (2 * n_neg)


def balanced_bce_sum(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float, neg_weight: float) -> torch.Tensor:
    """Σ_i c(y_i) · BCE(σ(z_i), y_i) with c(1) = pos_weight, c(0) = neg_weight (a sum; the caller normalises)."""
    y = labels.to(logits.dtype)
    weights = torch.where(labels == 1, pos_weight, neg_weight).to(logits.dtype)
    return (weights * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()


def probe_loss_sum(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | float,
    pos_weight: float,
    neg_weight: float,
) -> torch.Tensor:
    """Class-balanced BCE sum of the linear head (weight (d,), bias) on mean-pooled `hidden` (b, t, d)."""
    return balanced_bce_sum(mean_pool(hidden, attention_mask) @ weight + bias, labels, pos_weight, neg_weight)


# ----- config --------------------------------------------------------------------------------------------


@dataclass
class ProbeTrainerConfig(TrainerConfig):
    """The shared trainer's settings with defaults for a linear head on cached features."""

    output_dir: str = "outputs/safethinker/probe"
    seed: int = 0
    num_epochs: int = 20
    per_device_batch_size: int = 16
    learning_rate: float = 1e-2
    weight_decay: float = 1e-2  # AdamW's decoupled decay on the head's weight (not its bias)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "no"  # a 1 × d head: fp32
    logging_steps: int = 10
    overwrite_output_dir: bool = True  # refitting the head is cheap


@dataclass
class ProbeHeadConfig:
    """What the probe trainer adds to the shared trainer."""

    standardize: bool = True  # head on (x − mean) / std of the training features (folded back into w, b)
    cache_features: bool = True  # the frozen LLM's pooled state of a prompt is computed once


@dataclass
class ProbeTrainingConfig:
    """`trainer` (the shared trainer's keys) + `probe`; load with `llmkit.config.load_config`."""

    trainer: ProbeTrainerConfig = field(default_factory=ProbeTrainerConfig)
    probe: ProbeHeadConfig = field(default_factory=ProbeHeadConfig)


# ----- data and head ---------------------------------------------------------------------------------------


@dataclass
class ProbeExample(TokenizedExample):
    """A chat-templated prompt; `labels` is -100 except the last position, which holds `label` (0/1)."""

    label: int = 0


def probe_examples(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int = 256) -> list[ProbeExample]:
    """(text, label) pairs → trainer examples with the probe's tokens (`encode_probe_prompts`)."""
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels")
    out = []
    for ids, y in zip(encode_probe_prompts(tokenizer, texts, max_length), labels):
        y = int(y)
        if y not in (0, 1):
            raise DataError(f"probe labels must be 0 or 1, got {y}")
        if len(ids) < 2:
            raise DataError("a probe prompt must have at least 2 tokens (raise max_length)")
        out.append(ProbeExample(input_ids=ids, labels=[IGNORE_INDEX] * (len(ids) - 1) + [y], source="probe", label=y))
    return out


def batch_classes(labels: torch.Tensor) -> torch.Tensor:
    """The class of each row of a collated probe batch: its one label that is not -100."""
    return labels.max(dim=1).values


class ProbeHead(torch.nn.Module):
    """logit = v · (x − mean) / std + c; `mean`, `std` are buffers (ones/zeros without standardization)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def raw_weights(self) -> tuple[np.ndarray, float]:
        """(w, b) on raw pooled states: w = v / std, b = c − w · mean (float64)."""
        v = self.linear.weight[0].double().cpu()
        w = v / self.std.double().cpu()
        b = float(self.linear.bias.double().cpu()[0] - (w * self.mean.double().cpu()).sum())
        return w.numpy(), b


# ----- the trainer ----------------------------------------------------------------------------------------


class ProbeTrainer(Trainer):
    """The shared trainer on a `ProbeHead`; the frozen LLM only produces pooled hidden states."""

    method_name = "safethinker-probe"

    def __init__(
        self,
        cfg: TrainerConfig,
        settings: ProbeHeadConfig,
        llm,
        tokenizer,
        train_data: list[ProbeExample],
        eval_data: list[ProbeExample] | None = None,
        layer: int = -1,
        run_config: dict[str, Any] | None = None,
        accelerator=None,
    ):
        if cfg.packing != "none":
            raise ConfigError(
                f"trainer.packing: {cfg.packing} is not supported for the probe (one prompt per row); use none"
            )
        self.llm = llm.eval()
        self.layer = layer
        self.settings = settings
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.pos_weight, self.neg_weight = class_balance_weights([ex.label for ex in train_data])
        head = ProbeHead(llm.config.hidden_size)
        super().__init__(cfg, head, tokenizer, train_data, eval_data, run_config, accelerator)
        if settings.standardize:
            x = self._features_of(train_data)
            unwrapped = self.accelerator.unwrap_model(self.model)
            unwrapped.mean.copy_(x.mean(0).to(unwrapped.mean.device))
            unwrapped.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6).to(unwrapped.std.device))

    @property
    def head(self) -> ProbeHead:
        """The trained head (unwrapped)."""
        return self.accelerator.unwrap_model(self.model)

    # ----- features -------------------------------------------------------------------------------------

    @torch.no_grad()
    def pooled_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(rows, d) float32 mean-pooled layer-`layer` states of a collated batch, on the trainer's device."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        keys = [tuple(row[: int(m.sum())].tolist()) for row, m in zip(ids, mask)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            device = next(self.llm.parameters()).device
            sub_ids, sub_mask = ids[missing].to(device), mask[missing].to(device)
            hs = self.llm(
                input_ids=sub_ids, attention_mask=sub_mask, output_hidden_states=True, use_cache=False
            ).hidden_states[self.layer]
            pooled = mean_pool(hs.float(), sub_mask).cpu()
            for j, i in enumerate(missing):
                fresh[i] = pooled[j]
                if self.settings.cache_features:
                    self._cache[keys[i]] = pooled[j]
        rows = [fresh[i] if i in fresh else self._cache[k] for i, k in enumerate(keys)]
        return torch.stack(rows).to(self.accelerator.device)

    def _features_of(self, data: list[ProbeExample]) -> torch.Tensor:
        bs = self.cfg.per_device_batch_size
        pad = self.tokenizer.pad_token_id
        return torch.cat(
            [self.pooled_features(collate_examples(data[i : i + bs], pad)) for i in range(0, len(data), bs)]
        )

    # ----- hooks ----------------------------------------------------------------------------------------

    def compute_loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Class-balanced BCE sum of the head on the batch's pooled states (the loop divides by the step's examples)."""
        logits = model(self.pooled_features(batch)).float()
        return balanced_bce_sum(logits, batch_classes(batch["labels"]), self.pos_weight, self.neg_weight), {}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Class-balanced BCE per example on the eval prompts (weights from the eval set's own balance)."""
        self.model.eval()
        acc = self.accelerator
        pos_w, neg_w = class_balance_weights([ex.label for ex in self.eval_data])
        mine = self.eval_data[acc.process_index :: self.world_size]
        bs, pad, total = self.cfg.per_device_batch_size, self.tokenizer.pad_token_id, 0.0
        for start in range(0, len(mine), bs):
            batch = collate_examples(mine[start : start + bs], pad)
            logits = self.model(self.pooled_features(batch)).float()
            total += float(balanced_bce_sum(logits, batch_classes(batch["labels"]).to(logits.device), pos_w, neg_w))
        return self._sum_over_processes(total)[0] / len(self.eval_data)

    def save_final_model(self) -> Path:
        """Write the head alone: probe_head.json (raw w, b, layer, standardization stats) + trainer_state.json."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            w, b = self.head.raw_weights()
            atomic_write_json(
                self.output_dir / "probe_head.json",
                {
                    "kind": "probe_head",
                    "w": w.tolist(),
                    "b": b,
                    "layer": self.layer,
                    "mean": self.head.mean.cpu().tolist(),
                    "std": self.head.std.cpu().tolist(),
                    "n_train": len(self.train_data),
                    "pos_weight": self.pos_weight,
                    "neg_weight": self.neg_weight,
                },
            )
            if self.run_config:
                (self.output_dir / "probe_config.json").write_text(json.dumps(self.run_config, indent=1))
            atomic_write_json(
                self.output_dir / "trainer_state.json", {"global_step": self.global_step, "world_size": self.world_size}
            )
        acc.wait_for_everyone()
        return self.output_dir


def train_probe_head(
    llm,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    cfg: ProbeTrainingConfig | None = None,
    layer: int = -1,
    max_length: int = 256,
    output_dir: str | Path | None = None,
    eval_texts: Sequence[str] | None = None,
    eval_labels: Sequence[int] | None = None,
) -> tuple[np.ndarray, float, ProbeTrainer]:
    """Train the probe head on (texts, labels) through the shared trainer; returns (w, b, trainer).

    `output_dir` (or cfg.trainer.output_dir) receives metrics.jsonl, checkpoints if save_steps > 0 and
    probe_head.json. With a per-device batch larger than the data (one process, no accumulation) the
    batch is shrunk to the data size rather than failing.
    """
    from llmkit.config import to_dict

    cfg = cfg or ProbeTrainingConfig()
    tcfg = cfg.trainer
    if output_dir is not None:
        tcfg = dataclasses.replace(tcfg, output_dir=str(output_dir))
    train = probe_examples(tokenizer, texts, labels, max_length)
    per_accum = len(train) // tcfg.gradient_accumulation_steps
    if 1 <= per_accum < tcfg.per_device_batch_size:
        tcfg = dataclasses.replace(tcfg, per_device_batch_size=per_accum)
    evals = probe_examples(tokenizer, eval_texts, eval_labels, max_length) if eval_texts else None
    run_config = {**to_dict(dataclasses.replace(cfg, trainer=tcfg)), "layer": layer, "max_length": max_length}
    trainer = ProbeTrainer(tcfg, cfg.probe, llm, tokenizer, train, evals, layer=layer, run_config=run_config)
    trainer.train()
    w, b = trainer.head.raw_weights()
    return w, b, trainer
