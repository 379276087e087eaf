"""Unlearning on the shared trainer: gradient ascent, EFUF-style, and SARE (Targeted-SAM) steps.

Every optimizer step holds a global batch of forget examples (the taught hallucinations; the trainer's
`train_data`) and, for EFUF and SARE, a global batch of retain examples (grounded statements, gold text,
sentences) drawn from their own seeded order. `training_step` builds the two backward closures and lets
`sam.targeted_sam_step` combine them: ρ = 0 for EFUF (the plain step), ρ > 0 for SARE; GA has no
retain term.

Image-text models (LLaVA-style) work the same way: examples carry their image tensors in `image_inputs`
(see `multimodal.py`), the micro-batches stack them and every forward passes them to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from llmkit.data.sft import TokenizedExample
from llmkit.errors import ConfigError, DataError
from llmkit.train.batching import steps_per_epoch
from llmkit.train.trainer import Trainer, TrainerConfig, build_accelerator
from llmkit.unlearning.examples import ScoredExample  # re-exported: proxy.py and callers import it from here
from llmkit.unlearning.losses import (
    KIND_GOLD,
    KIND_NEG,
    KIND_POS,
    KIND_SENT,
    efuf_loss,
    gradient_ascent_loss,
    per_example_ce,
)
from llmkit.unlearning.multimodal import collate_image_inputs, forward_inputs
from llmkit.unlearning.sam import targeted_sam_step
from llmkit.unlearning.schedules import efuf_weights


@dataclass
class UnlearningConfig:
    """Which unlearning algorithm, and the EFUF/SARE hyper-parameters (EFUF's code defaults)."""

    algorithm: Literal["ga", "efuf", "sare"] = "sare"
    # SARE: radius of the worst-case perturbation and the weight of the perturbed forget gradient.
    # docs/methods/sare.md marks ρ = 0.05, λ₁ = 1 as UNVERIFIED (no code was found for the paper).
    rho: float = 0.05
    lambda1: float = 1.0
    # EFUF loss: T = 55 (sum of the CLIP thresholds), gold captions score 40.
    neg_threshold_sum: float = 55.0
    gold_score: float = 40.0
    w_neg_start: float = 0.3
    w_neg_end: float = 0.0
    w_pos_start: float = 1.0
    w_pos_end: float = 0.5
    decay_start: float = 0.4
    w_gold: float = 0.3
    w_sent: float = 0.0  # SARE's λ₂ (the sentence term, docs/methods/sare.md); EFUF's default is 0
    retain_batch_size: int = 0  # retain examples per micro-batch; 0 = trainer.per_device_batch_size

    def __post_init__(self):
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0, got {self.rho}")
        if self.retain_batch_size < 0:
            raise ValueError(f"retain_batch_size must be >= 0, got {self.retain_batch_size}")


def batch_ce(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example CE (and target counts) of a collated micro-batch, image inputs passed to the model."""
    return per_example_ce(model(**forward_inputs(batch)).logits, batch["labels"])


class UnlearningTrainer(Trainer):
    """The shared trainer with a forget batch and a retain batch per step, and GA / EFUF / SARE gradients."""

    method_name = "sare"
    # The EFUF terms are per-example means and scores; packed rows would mix examples.
    supports_packing = ("none",)

    def __init__(
        self,
        cfg: TrainerConfig,
        settings: UnlearningConfig,
        model,
        tokenizer,
        forget: list[ScoredExample],
        retain: list[ScoredExample],
        eval_data: list[TokenizedExample] | None = None,
        run_config: dict[str, Any] | None = None,
        accelerator=None,
    ):
        if not forget:
            raise DataError("unlearning needs at least one forget example")
        if any(ex.kind != KIND_NEG for ex in forget):
            raise DataError("every forget example must have kind KIND_NEG")
        if any(ex.kind == KIND_NEG for ex in retain):
            raise DataError("a retain example has kind KIND_NEG (hallucinated); it belongs in the forget set")
        if any(getattr(ex, "image_inputs", None) for ex in eval_data or []):
            # The shared trainer's evaluate() feeds input_ids/attention_mask only; it would drop the images.
            raise DataError("eval_data with images is not supported; evaluate them with proxy.mean_token_ce")
        self.settings = settings
        self.retain_data = retain
        self.method_name = settings.algorithm
        accelerator = accelerator or build_accelerator(cfg)
        kind = accelerator.distributed_type.value
        if settings.algorithm == "sare" and kind in ("DEEPSPEED", "FSDP"):
            raise ConfigError(
                f"SARE's Targeted-SAM step does not run under {kind}: it perturbs every trainable parameter by "
                "ρ·g/‖g‖ between two backward passes and restores it exactly, which needs the full local "
                "gradient and parameters on each process; ZeRO/FSDP shard them and own backward/step. "
                "Use DDP (accelerate_configs/cpu_ddp.yaml or multi_gpu.yaml)"
            )
        super().__init__(cfg, model, tokenizer, forget, eval_data, run_config, accelerator)
        self.retain_batch_size = settings.retain_batch_size or cfg.per_device_batch_size
        self.retain_global_batch = self.retain_batch_size * cfg.gradient_accumulation_steps * self.world_size
        if self.uses_retain and steps_per_epoch(len(retain), self.retain_global_batch) == 0:
            raise ConfigError(
                f"{settings.algorithm} needs a retain set of at least {self.retain_global_batch} examples "
                f"(retain batch {self.retain_batch_size} × accumulation × processes); got {len(retain)}"
            )
        self._weights = efuf_weights(0.0)

    @property
    def uses_retain(self) -> bool:
        """GA trains on the forget set alone; EFUF and SARE add the retain terms."""
        return self.settings.algorithm != "ga"

    # ----- batches -----------------------------------------------------------------------------------

    def make_batch(self, examples: list[ScoredExample]) -> dict[str, Any]:
        """One example per row (see `supports_packing`), with image inputs, kinds and scores."""
        batch = super().make_batch(examples)
        batch.update(collate_image_inputs(examples))  # nothing for text-only examples
        batch["kinds"] = torch.tensor([ex.kind for ex in examples], dtype=torch.long)
        batch["scores"] = torch.tensor([ex.score for ex in examples], dtype=torch.float32)
        return batch

    def step_batches(self, step: int) -> list[dict[str, Any]]:
        """The step's forget micro-batches, then (EFUF/SARE) its retain micro-batches; each has kinds, scores, role."""
        cfg = self.cfg
        batches = [
            {**b, "role": "forget"}
            for b in self.micro_batches(self.train_data, cfg.per_device_batch_size, cfg.seed, step)
        ]
        if self.uses_retain:
            # A separate seeded order: the retain set is usually larger and cycles on its own epochs.
            batches += [
                {**b, "role": "retain"}
                for b in self.micro_batches(self.retain_data, self.retain_batch_size, cfg.seed + 1, step)
            ]
        return batches

    # ----- the step ----------------------------------------------------------------------------------

    def _losses(self, model, batch, counts) -> tuple[torch.Tensor, torch.Tensor]:
        ce, _ = batch_ce(model, batch)
        if self.settings.algorithm == "ga":
            return gradient_ascent_loss(ce, counts[KIND_NEG]), ce.sum() * 0.0
        s = self.settings
        return efuf_loss(ce, batch["kinds"], batch["scores"], self._weights, counts, s.neg_threshold_sum, s.gold_score)

    def training_step(self, model, micro_batches: list[dict[str, Any]], num_step_tokens: int) -> dict[str, float]:
        """GA / EFUF / SARE gradients for one optimizer step, accumulated in `.grad` (see `targeted_sam_step`)."""
        forget = [b for b in micro_batches if b["role"] == "forget"]
        retain = [b for b in micro_batches if b["role"] == "retain"]
        s = self.settings
        progress = self.global_step / max(self.total_steps - 1, 1)
        self._weights = efuf_weights(
            progress, s.w_neg_start, s.w_neg_end, s.w_pos_start, s.w_pos_end, s.decay_start, s.w_gold, s.w_sent
        )
        local = [
            sum(int((b["kinds"] == k).sum()) for b in micro_batches) for k in (KIND_NEG, KIND_POS, KIND_GOLD, KIND_SENT)
        ]
        counts = dict(zip((KIND_NEG, KIND_POS, KIND_GOLD, KIND_SENT), self._sum_over_processes(*local)))
        # Losses are means over the whole step (global counts); undo DDP's average over processes and
        # accelerate's division of each backward by the accumulation steps.
        scale = self.world_size * self.cfg.gradient_accumulation_steps

        def run(batches, part: int, multiplier: float, sync: bool) -> float:
            total = 0.0
            for i, batch in enumerate(batches):
                with self.micro_step(is_last=sync and i == len(batches) - 1):
                    loss = self._losses(model, batch, counts)[part]
                    self.accelerator.backward(loss * (multiplier * scale))
                total += float(loss.detach())
            return total

        params = [p for p in model.parameters() if p.requires_grad]
        rho = s.rho if s.algorithm == "sare" else 0.0
        lambda1 = s.lambda1 if s.algorithm == "sare" else 1.0
        stats = targeted_sam_step(
            params,
            lambda scale_, sync: run(forget, 0, scale_, sync),
            (lambda sync: run(retain, 1, 1.0, sync)) if self.uses_retain else None,
            rho,
            lambda1,
        )
        forget_loss, retain_loss = stats.get("forget_loss", 0.0), stats.get("retain_loss", 0.0)
        # The loop divides every *_sum-style value by the step's target tokens; pre-multiply so the logged
        # numbers are the step's loss terms themselves.
        out = {
            "loss_sum": (forget_loss + retain_loss) * num_step_tokens,
            "forget_loss": forget_loss * num_step_tokens,
            "retain_loss": retain_loss * num_step_tokens,
        }
        if "forget_loss_at_theta" in stats:
            out["forget_loss_at_theta"] = stats["forget_loss_at_theta"] * num_step_tokens
        return out

    def step_metrics(self) -> dict[str, float]:
        """The EFUF weights used in the step just taken."""
        return {"w_neg": self._weights.neg, "w_pos": self._weights.pos}

    def method_state_dict(self) -> dict[str, Any]:
        """Nothing to carry: the weight schedules are functions of the step, which the checkpoint holds."""
        return {"algorithm": self.settings.algorithm}
