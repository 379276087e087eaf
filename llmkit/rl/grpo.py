"""GRPO on the shared trainer, with CEEH's difficulty-aware entropy and length reward as options.

One optimizer step, top to bottom (`GRPOTrainer.step_batches` then `training_step`):

1. take this process's prompts of the step (the trainer's deterministic batching over prompt records);
2. sample n completions per prompt with the current policy through the generation interface (hf);
3. score them: correctness reward (a verifier), then, with CEEH, the per-prompt accuracy, the hard mask
   (against the history *before* this step), the dynamic length reward, and the history/anchor updates;
4. group advantages (GRPO or Dr.GRPO) and, with a KL term, reference log-probs (no grad);
5. loss per micro-batch: clipped policy loss (+ KL to the reference) aggregated by the configured mode,
   minus the ME entropy bonus; EA mode adds its entropy bonus to the advantages instead.

The pure pieces live in `core_algos` and `ceeh`; this file is the plumbing.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from llmkit.data.sft import IGNORE_INDEX
from llmkit.generation.types import SamplingParams
from llmkit.rl import ceeh
from llmkit.rl.core_algos import (
    ADVANTAGE_ESTIMATORS,
    KL_PENALTIES,
    POLICY_LOSSES,
    aggregate,
    entropy_from_logits,
    get,
    token_log_probs,
)
from llmkit.train.batching import process_micro_batches, step_indices
from llmkit.train.losses import step_normalised_loss
from llmkit.train.trainer import Trainer

logger = logging.getLogger(__name__)
RewardFn = Callable[[str, dict[str, Any]], float]


@dataclass
class GRPOSettings:
    """GRPO and CEEH settings (the recipe's `method` section); defaults follow CEEH's train.sh where it sets them."""

    num_generations: int = 4
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 256
    advantage: Literal["grpo", "drgrpo"] = "drgrpo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: Literal["low_var_kl", "k1"] = "low_var_kl"
    entropy_coef: float = 0.0  # a plain entropy bonus on every token (TRL/verl `entropy_coeff`)
    mask_truncated: bool = False  # completions cut at max_new_tokens contribute no loss
    # CEEH
    entropy_mode: Literal["none", "me", "ea"] = "none"
    me_coef: float = 0.001
    me_factor: float = 5.0
    me_retain: bool = False
    ea_alpha: float = 0.4
    ea_kappa: float = 2.0
    length_reward: bool = False
    length_beta: float = 0.1
    length_floor: float = -0.9


@dataclass
class Rollout:
    """The scored completions of one micro-batch of prompts (n per prompt, grouped)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    truncated: list[bool]
    correct: np.ndarray
    rewards: np.ndarray
    hard: np.ndarray  # per completion


class GRPOTrainer(Trainer):
    """The shared trainer with rollouts instead of a fixed dataset: `train_data` is a list of prompt records.

    Each record needs `prompt` (text or chat messages), `index` (a stable int, for per-prompt state) and
    whatever the reward function reads (e.g. `answer`). `per_device_batch_size` counts prompts; each
    brings `num_generations` completions.
    """

    method_name = "grpo"

    def __init__(self, cfg, settings: GRPOSettings, model, tokenizer, prompts: list[dict[str, Any]], reward_fn: RewardFn,
                 generator_factory: Callable | None = None, **kwargs):
        super().__init__(cfg, model, tokenizer, prompts, **kwargs)
        self.settings = settings
        self.reward_fn = reward_fn
        size = max(int(p["index"]) for p in prompts) + 1
        self.accuracy_history = np.full(size, ceeh.UNSEEN)
        self.anchor = np.zeros(size)
        self._metrics: dict[str, float] = {}
        self._generator_factory = generator_factory
        self._generator_step: int | None = None  # the step whose weights the factory's generator holds
        self._generator = None

    # ----- rollouts ----------------------------------------------------------------------------------

    def generator(self):
        """The generation backend over the current policy weights (hf by default).

        A `generator_factory` (e.g. `VLLMRollouts`) is called once per optimizer step, since the weights
        change only between steps; the hf generator reads the live model and costs nothing to build.
        """
        policy = self.accelerator.unwrap_model(self.model)
        if self._generator_factory is not None:
            if self._generator_step != self.global_step or self._generator is None:
                self._generator = self._generator_factory(policy, self.tokenizer)
                self._generator_step = self.global_step
            return self._generator
        from llmkit.generation.hf import HFGenerator

        # one generate call for all completions of a micro-batch: per-token Python overhead is paid once
        batch = max(8, self.cfg.per_device_batch_size * self.settings.num_generations)
        return HFGenerator(policy, self.tokenizer, batch_size=batch, show_progress=False)

    def rollout(self, records: list[dict[str, Any]], step: int) -> Rollout:
        """Sample, verify and (CEEH) reward-shape the completions of `records`; updates per-prompt state."""
        s = self.settings
        params = SamplingParams(n=s.num_generations, temperature=s.temperature, top_p=s.top_p,
                                max_new_tokens=s.max_new_tokens, seed=self.cfg.seed * 100_003 + step)
        outputs = self.generator().generate([r["prompt"] for r in records], params)
        prompt_ids, completion_ids, truncated, correct, lengths = [], [], [], [], []
        for record, out in zip(records, outputs):
            ids = self.tokenizer(out.prompt_text, add_special_tokens=False)["input_ids"]
            for c in out.completions:
                prompt_ids.append(ids)
                completion_ids.append(list(c.token_ids))
                truncated.append(c.finish_reason == "length")
                correct.append(float(self.reward_fn(c.text, record)) >= 1.0)
                lengths.append(len(c.token_ids))
        n = s.num_generations
        correct_arr = np.array(correct, dtype=bool).reshape(-1, n)
        length_arr = np.array(lengths, dtype=np.float64).reshape(-1, n)
        accuracy = correct_arr.mean(axis=1)
        idx = np.array([int(r["index"]) for r in records])
        hard = ceeh.hard_mask(accuracy, self.accuracy_history)
        r_len = np.zeros_like(length_arr)
        if s.length_reward:
            for g, i in enumerate(idx):
                r_len[g] = ceeh.length_reward(length_arr[g], correct_arr[g], self.anchor[i], accuracy[g],
                                              self.accuracy_history[i], s.length_beta, s.length_floor)
        rewards = correct_arr.astype(np.float64) + r_len
        self._update_state(idx, accuracy, length_arr, correct_arr)
        self._metrics = {
            "reward": float(rewards.mean()), "accuracy": float(accuracy.mean()),
            "length_reward": float(r_len.mean()), "completion_length": float(length_arr.mean()),
            "correct_length": float(length_arr[correct_arr].mean()) if correct_arr.any() else float("nan"),
            "hard_fraction": float(hard.mean()), "truncated_fraction": float(np.mean(truncated)),
            # hard prompts whose group has right and wrong answers: the only ones EA's bonus can move
            "hard_mixed_fraction": float(np.mean(hard & (accuracy > 0) & (accuracy < 1))),
        }
        return Rollout(prompt_ids, completion_ids, truncated, correct_arr.reshape(-1), rewards.reshape(-1), np.repeat(hard, n))

    def _update_state(self, idx, accuracy, lengths, correct) -> None:
        """History and anchor updates of every process's prompts (identical on all processes)."""
        from accelerate.utils import gather_object

        mine = [(int(i), float(a), lengths[g].tolist(), correct[g].tolist()) for g, (i, a) in enumerate(zip(idx, accuracy))]
        everyone = gather_object(mine) if self.world_size > 1 else mine
        history = self.accuracy_history
        for i, a, ls, cs in everyone:
            self.anchor[i] = ceeh.update_anchor(self.anchor[i], np.array(ls), np.array(cs))
        self.accuracy_history = ceeh.update_history(history, np.array([e[0] for e in everyone]), np.array([e[1] for e in everyone]))

    @torch.no_grad()
    def _log_probs(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return token_log_probs(logits[:, :-1], batch["labels"][:, 1:].clamp(min=0))

    def step_batches(self, step: int) -> list[dict[str, Any]]:
        """Roll out this process's prompts of `step` and turn each micro-batch into training tensors."""
        acc = self.accelerator
        indices = step_indices(len(self.train_data), self.global_batch, self.cfg.seed, step, self.cfg.shuffle)
        shards = process_micro_batches(indices, self.world_size, acc.process_index,
                                       self.cfg.per_device_batch_size, self.cfg.gradient_accumulation_steps)
        batches, metrics = [], []
        for shard in shards:
            rollout = self.rollout([self.train_data[i] for i in shard], step)
            metrics.append(self._metrics)
            batches.append(self._tensors(rollout))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self._metrics = {k: float(np.nanmean([m[k] for m in metrics])) for k in metrics[0]}
        # No separate "old policy" pass: every rollout feeds exactly one optimizer step and the weights do not
        # change between its micro-batches, so π_old = π_θ and the loss uses log π_θ detached (ratio 1, as TRL
        # and verl do with one update per batch). A batch that carries `old_log_probs` (reused rollouts) keeps them.
        if self.settings.kl_coef > 0:
            policy = acc.unwrap_model(self.model)
            for batch in batches:
                with self._reference(policy):
                    batch["ref_log_probs"] = self._log_probs(policy, batch)
        return batches

    def _tensors(self, r: Rollout) -> dict[str, Any]:
        s = self.settings
        advantages = get(ADVANTAGE_ESTIMATORS, s.advantage)(torch.tensor(r.rewards, dtype=torch.float32), s.num_generations)
        rows = [(p + c, [IGNORE_INDEX] * len(p) + (([IGNORE_INDEX] * len(c)) if (t and s.mask_truncated) else c))
                for p, c, t in zip(r.prompt_ids, r.completion_ids, r.truncated)]
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, (ids, labs) in enumerate(rows):
            input_ids[k, : len(ids)] = torch.tensor(ids)
            labels[k, : len(labs)] = torch.tensor(labs)
            mask[k, : len(ids)] = 1
        device = self.accelerator.device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
                "advantages": advantages.to(device), "hard": torch.tensor(r.hard, device=device), "num_examples": len(rows)}

    @contextlib.contextmanager
    def _reference(self, policy):
        """The reference policy: the base weights (LoRA adapters disabled). Full fine-tuning needs a copy."""
        if hasattr(policy, "disable_adapter"):
            with policy.disable_adapter():
                yield
        else:
            raise NotImplementedError("kl_coef > 0 with full fine-tuning needs a reference copy; use LoRA")

    # ----- loss --------------------------------------------------------------------------------------

    def grpo_loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's loss in its aggregated (mean) form, and its metric values."""
        s = self.settings
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = (labels != IGNORE_INDEX).float()
        log_probs = token_log_probs(logits, labels.clamp(min=0))
        entropy = entropy_from_logits(logits)
        advantages = batch["advantages"]
        metrics = {}
        if s.entropy_mode == "ea":
            shaped = ceeh.ea_advantages(advantages, entropy, batch["hard"], s.ea_alpha, s.ea_kappa)
            # EA acts only where a hard prompt's group has mixed rewards (A != 0): log how often that is.
            changed = shaped != (advantages[:, None] if advantages.dim() == 1 else advantages)
            metrics["ea_bonus_fraction"] = float((changed.float() * mask).sum() / mask.sum().clamp(min=1))
            advantages = shaped
        old_log_probs = batch["old_log_probs"] if "old_log_probs" in batch else log_probs.detach()
        per_token, clipped = get(POLICY_LOSSES, "clipped")(log_probs, old_log_probs, advantages, s.clip_low, s.clip_high)
        if s.kl_coef > 0:
            kl = get(KL_PENALTIES, s.kl_estimator)(log_probs, batch["ref_log_probs"])
            per_token = per_token + s.kl_coef * kl
            metrics["kl"] = float(aggregate(kl.detach(), mask, "token-mean"))
        loss = aggregate(per_token, mask, s.loss_aggregation, norm_length=s.max_new_tokens)
        if s.entropy_coef > 0:
            loss = loss - s.entropy_coef * aggregate(entropy, mask, "token-mean")
        if s.entropy_mode == "me":
            schedule = ceeh.cosine_schedule(self.global_step, self.total_steps)
            weights, scale = ceeh.me_entropy_weights(batch["hard"], schedule, s.me_factor, s.me_retain)
            loss = loss - s.me_coef * scale * ceeh.me_entropy_bonus(entropy, mask, weights)
        hard = batch["hard"].float()[:, None] * mask
        easy = (1 - batch["hard"].float())[:, None] * mask
        metrics.update({
            "entropy": float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1)),
            "entropy_hard": float((entropy.detach() * hard).sum() / hard.sum()) if hard.sum() > 0 else float("nan"),
            "entropy_easy": float((entropy.detach() * easy).sum() / easy.sum()) if easy.sum() > 0 else float("nan"),
            "clip_fraction": float((clipped * mask).sum() / mask.sum().clamp(min=1)),
        })
        return loss, metrics

    def training_step(self, model, micro_batches, num_step_tokens: int) -> dict[str, float]:
        """Each micro-batch's mean-form loss weighted by its share of the step (tokens or completions)."""
        by_tokens = self.settings.loss_aggregation == "token-mean"
        units = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) if by_tokens else b["num_examples"] for b in micro_batches]
        step_units = self._sum_over_processes(sum(units))[0]
        total, collected = 0.0, []
        for i, (batch, n_units) in enumerate(zip(micro_batches, units)):
            with self.micro_step(is_last=i == len(micro_batches) - 1):
                loss, metrics = self.grpo_loss(model, batch)
                weight = n_units / max(step_units, 1)
                # step_normalised_loss(x, N, world, accum) = x·world·accum/N: pass the weighted loss with N = 1
                self.accelerator.backward(step_normalised_loss(loss * weight, 1, self.world_size, self.cfg.gradient_accumulation_steps))
            total += float(loss.detach()) * weight
            collected.append(metrics)
        with warnings.catch_warnings():  # a metric that is NaN in every micro-batch (no hard prompt) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            self._metrics.update({k: float(np.nanmean([m[k] for m in collected])) for k in collected[0]})
        # the loop sums loss_sum over processes and divides by the step's target tokens: Σ_p total_p = the step's loss
        return {"loss_sum": total * num_step_tokens}

    def step_metrics(self) -> dict[str, float]:
        """Rollout and loss metrics of the step just taken (this process's view)."""
        return dict(self._metrics)

    # ----- per-prompt state in checkpoints -------------------------------------------------------------

    def method_state_dict(self) -> dict[str, Any]:
        """CEEH's accuracy history and length anchors, indexed by the prompt records' `index`."""
        return {"history": self.accuracy_history.tolist(), "anchor": self.anchor.tolist()}

    def load_method_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history and anchors saved by `method_state_dict`."""
        self.accuracy_history = np.array(state["history"], dtype=np.float64)
        self.anchor = np.array(state["anchor"], dtype=np.float64)
