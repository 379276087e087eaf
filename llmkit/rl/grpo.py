"""GRPO on the shared trainer, with CEEH's difficulty-aware entropy and length reward as options.

One rollout, top to bottom (`GRPOTrainer.make_rollout`, at the first optimizer step it feeds):

1. take this process's prompts of the rollout (`rollout_mini_batches` global batches of the trainer's
   deterministic batching over prompt records);
2. sample n completions per prompt with the current policy, all in one call of the generation interface;
3. score them: reward (a verifier, or code execution), then, with CEEH, the per-prompt accuracy, the hard
   mask and the dynamic length reward, all against the per-prompt state *before* this rollout; then the
   history/anchor updates, once;
4. group advantages (GRPO or Dr.GRPO); π_old log-probs when the rollout feeds more than one optimizer
   step, and reference log-probs with a KL term (no grad, at the sampling temperature).

Then each of the rollout's `num_iterations × rollout_mini_batches` optimizer steps (`training_step`)
takes one mini-batch: clipped policy loss (+ KL to the reference) aggregated by the configured mode,
minus the ME entropy bonus; EA mode adds its entropy bonus to the advantages instead. Log-probs and
entropy are those of the sampling distribution, softmax(z / T), as in TRL and verl.

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

from llmkit.data.padding import pad_right
from llmkit.data.sft import IGNORE_INDEX
from llmkit.errors import ConfigError
from llmkit.generation.types import SamplingParams
from llmkit.rl import ceeh
from llmkit.rl.core_algos import (
    ADVANTAGE_ESTIMATORS,
    KL_PENALTIES,
    POLICY_LOSSES,
    aggregate,
    get,
    sampling_logits,
    token_log_probs,
    token_log_probs_and_entropy,
)
from llmkit.rl.rewards import score_completions
from llmkit.train.losses import step_normalised_loss
from llmkit.train.trainer import Trainer

logger = logging.getLogger(__name__)
RewardFn = Callable[[str, dict[str, Any]], float]


@dataclass
class GRPOMethodConfig:
    """GRPO and CEEH settings (the recipe's `method` section); defaults follow CEEH's train.sh where it sets them."""

    num_generations: int = 4
    temperature: float = 0.6  # sampling temperature; log-probs and entropy are scored at the same temperature
    top_p: float = 1.0
    max_new_tokens: int = 256
    advantage: Literal["grpo", "drgrpo"] = "drgrpo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    # verl's dual clip (clip_ratio_c, on by default there, so in CEEH's runs): for A < 0 the loss is capped
    # at −c·A, so a token whose ratio has grown large cannot dominate; 0 turns it off (TRL has none)
    dual_clip: float = 3.0
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: Literal["low_var_kl", "k1"] = "low_var_kl"
    entropy_coef: float = 0.0  # a plain entropy bonus on every token (TRL/verl `entropy_coeff`)
    mask_truncated: bool = False  # completions cut at max_new_tokens contribute no loss
    # Reuse of each rollout (PPO-style). The rollout holds `rollout_mini_batches` global batches of prompts
    # (verl: train_batch_size / ppo_mini_batch_size); each pass over it takes one optimizer step per
    # mini-batch, and there are `num_iterations` passes (TRL's name; verl's ppo_epochs). With 1 × 1 every
    # rollout feeds one step and π_old = π_θ (ratio 1); otherwise π_old's log-probs are stored at rollout
    # time and the clipped objective acts.
    num_iterations: int = 1
    rollout_mini_batches: int = 1
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

    def __post_init__(self):
        for name in ("num_generations", "max_new_tokens", "num_iterations", "rollout_mini_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (GRPO samples; log-probs are scored at it), got {self.temperature}"
            )

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps fed by one rollout."""
        return self.num_iterations * self.rollout_mini_batches


@dataclass
class Rollout:
    """Scored completions of a list of prompts (n per prompt, grouped contiguously)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    truncated: list[bool]
    correct: np.ndarray
    rewards: np.ndarray
    hard: np.ndarray  # per completion

    def slice(self, start: int, stop: int) -> "Rollout":
        """Completions start..stop-1 (whole groups when the bounds are multiples of n)."""
        return Rollout(
            self.prompt_ids[start:stop],
            self.completion_ids[start:stop],
            self.truncated[start:stop],
            self.correct[start:stop],
            self.rewards[start:stop],
            self.hard[start:stop],
        )


def grpo_objective(
    log_probs: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    hard: torch.Tensor,
    settings: GRPOMethodConfig,
    old_log_probs: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    schedule: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO/CEEH loss of one micro-batch in its aggregated (mean) form, from per-token tensors; and metrics.

    log_probs, entropy, mask: (B, T) at the sampling temperature; advantages (B,); hard (B,) bool.
    old_log_probs None means π_old = π_θ (log_probs detached, ratio 1). Terms:

        EA:   Â = A + hard · min(α·sg(H), |A|/κ)           (token-level advantages)
        loss = agg(−min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â) + β·KL(π_θ‖π_ref))
               − c_H · token-mean(H)                        (entropy_coef)
               − c_ME · scale · Σ w·H / Σ w                 (ME; w, scale from the hard mask and s(t) = `schedule`)
    """
    s = settings
    metrics: dict[str, float] = {}
    mask = mask.to(log_probs.dtype)
    if s.entropy_mode == "ea":
        shaped = ceeh.ea_advantages(advantages, entropy, hard, s.ea_alpha, s.ea_kappa)
        # EA acts only where a hard prompt's group has mixed rewards (A != 0): log how often that is.
        changed = shaped != (advantages[:, None] if advantages.dim() == 1 else advantages)
        metrics["ea_bonus_fraction"] = float((changed.float() * mask).sum() / mask.sum().clamp(min=1))
        advantages = shaped
    old = log_probs.detach() if old_log_probs is None else old_log_probs
    per_token, clipped = get(POLICY_LOSSES, "clipped")(log_probs, old, advantages, s.clip_low, s.clip_high, s.dual_clip)
    if s.kl_coef > 0:
        kl = get(KL_PENALTIES, s.kl_estimator)(log_probs, ref_log_probs)
        per_token = per_token + s.kl_coef * kl
        metrics["kl"] = float(aggregate(kl.detach(), mask, "token-mean"))
    loss = aggregate(per_token, mask, s.loss_aggregation, norm_length=s.max_new_tokens)
    if s.entropy_coef > 0:
        loss = loss - s.entropy_coef * aggregate(entropy, mask, "token-mean")
    if s.entropy_mode == "me":
        weights, scale = ceeh.me_entropy_weights(hard, schedule, s.me_factor, s.me_retain)
        loss = loss - s.me_coef * scale * ceeh.me_entropy_bonus(entropy, mask, weights)
    hard_tokens = hard.to(mask.dtype)[:, None] * mask
    easy_tokens = mask - hard_tokens
    tokens = mask.sum().clamp(min=1)
    ratio = torch.exp(log_probs.detach() - old)
    h = entropy.detach()
    metrics.update(
        {
            "entropy": float((h * mask).sum() / tokens),
            "entropy_hard": float((h * hard_tokens).sum() / hard_tokens.sum())
            if hard_tokens.sum() > 0
            else float("nan"),
            "entropy_easy": float((h * easy_tokens).sum() / easy_tokens.sum())
            if easy_tokens.sum() > 0
            else float("nan"),
            "clip_fraction": float((clipped * mask).sum() / tokens),
            # |ρ − 1| over the loss tokens: exactly 0 with one update per rollout
            "ratio_deviation_max": float(((ratio - 1).abs() * mask).max()) if mask.any() else 0.0,
        }
    )
    return loss, metrics


class GRPOTrainer(Trainer):
    """The shared trainer with rollouts instead of a fixed dataset: `train_data` is a list of prompt records.

    Each record needs `prompt` (text or chat messages), `index` (a stable int, for per-prompt state) and
    whatever the reward function reads (e.g. `answer`). `per_device_batch_size` counts prompts; each
    brings `num_generations` completions. Optimizer step t belongs to rollout t // steps_per_rollout.
    """

    method_name = "grpo"
    # Rollout rows are padded one completion per row: the loss reads per-row advantages and log-probs, which
    # neither packing mode (dynamic, padding_free) keeps apart; refused at start (`check_packing`).
    supports_packing = ("none",)

    def __init__(
        self,
        cfg,
        settings: GRPOMethodConfig,
        model,
        tokenizer,
        prompts: list[dict[str, Any]],
        reward_fn: RewardFn,
        generator_factory: Callable | None = None,
        **kwargs,
    ):
        self.settings = settings  # before the base class plans the steps (steps_for_epochs reads it)
        super().__init__(cfg, model, tokenizer, prompts, **kwargs)
        if self.steps_per_epoch % settings.rollout_mini_batches:
            # a rollout must not straddle two epochs (a prompt would be rolled out twice in it, its state moved twice)
            raise ConfigError(
                f"method.grpo.rollout_mini_batches {settings.rollout_mini_batches} must divide the "
                f"{self.steps_per_epoch} global batches of {self.global_batch} prompts in an epoch"
            )
        if self.total_steps % settings.steps_per_rollout:
            logger.warning(
                "max_steps %d is not a multiple of the %d optimizer steps per rollout: the last rollout is "
                "used only in part",
                self.total_steps,
                settings.steps_per_rollout,
            )
        self.reward_fn = reward_fn
        size = max(int(p["index"]) for p in prompts) + 1
        self.accuracy_history = np.full(size, ceeh.UNSEEN)
        self.anchor = np.zeros(size)
        self._metrics: dict[str, float] = {}
        self._generator_factory = generator_factory
        self._generator_step: int | None = None  # the step whose weights the factory's generator holds
        self._generator = None
        # The current rollout: {"index": r, "batches": [mini-batch][micro-batch] tensors, "metrics": {...}}
        self._rollout: dict[str, Any] | None = None

    def steps_for_epochs(self, num_epochs: int) -> int:
        """Each epoch's prompts are rolled out once and each rollout is used `num_iterations` times."""
        return num_epochs * self.steps_per_epoch * self.settings.num_iterations

    def epochs_done(self, steps: int) -> float:
        """Passes over the prompts that `steps` optimizer steps make (each rollout feeds `num_iterations` passes)."""
        return steps / (self.steps_per_epoch * self.settings.num_iterations)

    # ----- rollouts ----------------------------------------------------------------------------------

    def generator(self):
        """The generation backend over the current policy weights (hf by default).

        A `generator_factory` (e.g. `VLLMRollouts`) is called again once the weights have changed; the hf
        generator reads the live model and costs nothing to build.
        """
        policy = self.accelerator.unwrap_model(self.model)
        if self._generator_factory is not None:
            if self._generator_step != self.global_step or self._generator is None:
                self._generator = self._generator_factory(policy, self.tokenizer)
                self._generator_step = self.global_step
            return self._generator
        from llmkit.generation.hf import HFGenerator

        # one generate call for all completions of a rollout: per-token Python overhead is paid once
        batch = max(8, self.global_batch * self.settings.rollout_mini_batches * self.settings.num_generations)
        return HFGenerator(policy, self.tokenizer, batch_size=batch, show_progress=False)

    def rollout(self, records: list[dict[str, Any]], rollout_index: int) -> tuple[Rollout, dict[str, float], tuple]:
        """Sample, verify and (CEEH) reward-shape the completions of `records`, against the per-prompt state as
        it was before this rollout. Returns the scored rollout, its metrics and the arguments of `update_state`
        (the state itself is not changed here)."""
        s = self.settings
        params = SamplingParams(
            n=s.num_generations,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            # each process its own stream: equal seeds would correlate the ranks' samples
            seed=self.cfg.seed * 100_003 + rollout_index + 7_919 * self.accelerator.process_index,
        )
        outputs = self.generator().generate([r["prompt"] for r in records], params)
        prompt_ids, completion_ids, truncated, texts, owners, lengths = [], [], [], [], [], []
        for record, out in zip(records, outputs):
            ids = self.tokenizer(out.prompt_text, add_special_tokens=False)["input_ids"]
            for c in out.completions:
                prompt_ids.append(ids)
                completion_ids.append(list(c.token_ids))
                truncated.append(c.finish_reason == "length")
                texts.append(c.text)
                owners.append(record)
                lengths.append(len(c.token_ids))
        n = s.num_generations
        scores = np.array(score_completions(self.reward_fn, texts, owners), dtype=np.float64).reshape(-1, n)
        correct = scores >= 1.0
        length_arr = np.array(lengths, dtype=np.float64).reshape(-1, n)
        accuracy = correct.mean(axis=1)
        idx = np.array([int(r["index"]) for r in records])
        hard = ceeh.hard_mask(accuracy, self.accuracy_history)
        r_len = np.zeros_like(length_arr)
        if s.length_reward:
            for g, i in enumerate(idx):
                r_len[g] = ceeh.length_reward(
                    length_arr[g],
                    correct[g],
                    self.anchor[i],
                    accuracy[g],
                    self.accuracy_history[i],
                    s.length_beta,
                    s.length_floor,
                )
        rewards = scores + r_len
        metrics = {
            "reward": float(rewards.mean()),
            "accuracy": float(accuracy.mean()),
            "length_reward": float(r_len.mean()),
            "completion_length": float(length_arr.mean()),
            "correct_length": float(length_arr[correct].mean()) if correct.any() else float("nan"),
            "hard_fraction": float(hard.mean()),
            "truncated_fraction": float(np.mean(truncated)),
            # hard prompts whose group has right and wrong answers: the only ones EA's bonus can move
            "hard_mixed_fraction": float(np.mean(hard & (accuracy > 0) & (accuracy < 1))),
        }
        scored = Rollout(
            prompt_ids, completion_ids, truncated, correct.reshape(-1), rewards.reshape(-1), np.repeat(hard, n)
        )
        return scored, metrics, (idx, accuracy, length_arr, correct)

    def update_state(self, idx, accuracy, lengths, correct) -> None:
        """History and anchor updates from every process's prompts of one rollout (identical on all processes).

        Called once per rollout, after all of its prompts are scored: every hard mask and length reward of the
        rollout used the state from before it, however the prompts are split into micro-batches.
        """
        from accelerate.utils import gather_object

        mine = [
            (int(i), float(a), lengths[g].tolist(), correct[g].tolist()) for g, (i, a) in enumerate(zip(idx, accuracy))
        ]
        everyone = gather_object(mine) if self.world_size > 1 else mine
        for i, a, ls, cs in everyone:
            self.anchor[i] = ceeh.update_anchor(self.anchor[i], np.array(ls), np.array(cs))
        self.accuracy_history = ceeh.update_history(
            self.accuracy_history, np.array([e[0] for e in everyone], dtype=int), np.array([e[1] for e in everyone])
        )

    @torch.no_grad()
    def _log_probs(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log π(completion tokens) at the sampling temperature, no graph (π_old and the reference)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return token_log_probs(
            sampling_logits(logits[:, :-1], self.settings.temperature), batch["labels"][:, 1:].clamp(min=0)
        )

    def _rollout_shards(self, rollout_index: int) -> list[list[list[int]]]:
        """This process's prompt indices of a rollout: [mini-batch][micro-batch] → record indices.

        Mini-batch m of rollout r holds the prompts that optimizer step r·M + m would hold with M = 1, so the
        data order does not depend on how rollouts are reused.
        """
        m_count = self.settings.rollout_mini_batches
        # Prompt records have no length to group by; they keep the sampled order.
        return [
            self.step_shards(
                self.train_data,
                self.cfg.per_device_batch_size,
                self.cfg.seed,
                rollout_index * m_count + m,
                group_by_length=False,
            )
            for m in range(m_count)
        ]

    def make_rollout(self, rollout_index: int) -> dict[str, Any]:
        """Roll out every prompt of a rollout in one generation call, update the per-prompt state once, and build
        the training tensors of each micro-batch (with π_old and reference log-probs where they are needed)."""
        s = self.settings
        shards = self._rollout_shards(rollout_index)
        records = [self.train_data[i] for mini in shards for shard in mini for i in shard]
        scored, metrics, state_update = self.rollout(records, rollout_index)
        self.update_state(*state_update)
        n, start, batches = s.num_generations, 0, []
        for mini in shards:
            micro = []
            for shard in mini:
                micro.append(self._tensors(scored.slice(start, start + len(shard) * n)))
                start += len(shard) * n
            batches.append(micro)
        policy = self.accelerator.unwrap_model(self.model)
        self.model.train()  # π_old is scored in the mode the loss runs in (generation may have switched to eval)
        for batch in (b for mini in batches for b in mini):
            if s.steps_per_rollout > 1:
                # π_old: the policy that sampled, stored before any update of this rollout (same mode as the loss)
                batch["old_log_probs"] = self._log_probs(self.model, batch)
            if s.kl_coef > 0:
                with self._reference(policy):
                    batch["ref_log_probs"] = self._log_probs(policy, batch)
        return {"index": rollout_index, "batches": batches, "metrics": metrics}

    def step_batches(self, step: int) -> list[dict[str, Any]]:
        """The micro-batches of optimizer step `step`: a new rollout at each rollout's first step, else its buffer."""
        s = self.settings
        rollout_index, within = divmod(step, s.steps_per_rollout)
        iteration, mini = divmod(within, s.rollout_mini_batches)
        if self._rollout is None or self._rollout["index"] != rollout_index:
            if within:
                # resumed in the middle of a rollout without its buffer: sampling again now would use weights
                # already updated on it and move the per-prompt state a second time
                raise ConfigError(
                    f"step {step} is in the middle of rollout {rollout_index}, whose buffer is not in the "
                    "checkpoint; resume from a checkpoint at a rollout boundary"
                )
            self._rollout = self.make_rollout(rollout_index)
            self._metrics = dict(self._rollout["metrics"])  # rollout metrics are logged once, at its first step
        else:
            self._metrics = {}
        if s.steps_per_rollout > 1:
            self._metrics.update({"rollout": rollout_index, "iteration": iteration, "mini_batch": mini})
        return self._rollout["batches"][mini]

    def _tensors(self, r: Rollout) -> dict[str, Any]:
        """One micro-batch of rollout rows on the device, through the shared seam (`make_batch`, `to_device`)."""
        return self.to_device(self.make_batch(r))

    def make_batch(self, r: Rollout) -> dict[str, Any]:
        """One micro-batch's rollout rows (prompt + completion, loss on the completion tokens) as right-padded
        host tensors with their advantages (hook; GRPO's examples are a slice of scored completions)."""
        s = self.settings
        advantages = get(ADVANTAGE_ESTIMATORS, s.advantage)(
            torch.tensor(r.rewards, dtype=torch.float32), s.num_generations
        )
        rows = [
            (p + c, [IGNORE_INDEX] * len(p) + (([IGNORE_INDEX] * len(c)) if (t and s.mask_truncated) else c))
            for p, c, t in zip(r.prompt_ids, r.completion_ids, r.truncated)
        ]
        padded = pad_right([ids for ids, _ in rows], self.tokenizer.pad_token_id, [labs for _, labs in rows])
        return {**padded, "advantages": advantages, "hard": torch.tensor(r.hard), "num_examples": len(rows)}

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
        """The micro-batch's loss in its aggregated (mean) form, and its metric values (see `grpo_objective`)."""
        s = self.settings
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[
            :, :-1
        ]
        labels = batch["labels"][:, 1:]
        # the entropy needs a graph only where a loss term uses it (EA uses sg(H))
        entropy_grad = s.entropy_coef > 0 or s.entropy_mode == "me"
        log_probs, entropy = token_log_probs_and_entropy(
            sampling_logits(logits, s.temperature), labels.clamp(min=0), entropy_grad=entropy_grad
        )
        schedule = ceeh.cosine_schedule(self.global_step, self.total_steps)
        return grpo_objective(
            log_probs,
            entropy,
            labels != IGNORE_INDEX,
            batch["advantages"],
            batch["hard"],
            s,
            old_log_probs=batch.get("old_log_probs"),
            ref_log_probs=batch.get("ref_log_probs"),
            schedule=schedule,
        )

    def training_step(self, model, micro_batches, num_step_tokens: int) -> dict[str, float]:
        """Each micro-batch's mean-form loss weighted by its share of the step (tokens or completions)."""
        by_tokens = self.settings.loss_aggregation == "token-mean"
        units = [
            int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) if by_tokens else b["num_examples"] for b in micro_batches
        ]
        step_units = self._sum_over_processes(sum(units))[0]
        total, collected = 0.0, []
        for i, (batch, n_units) in enumerate(zip(micro_batches, units)):
            with self.micro_step(is_last=i == len(micro_batches) - 1):
                loss, metrics = self.grpo_loss(model, batch)
                weight = n_units / max(step_units, 1)
                # step_normalised_loss(x, N, world, accum) = x·world·accum/N: pass the weighted loss with N = 1
                self.accelerator.backward(
                    step_normalised_loss(loss * weight, 1, self.world_size, self.cfg.gradient_accumulation_steps)
                )
            total += float(loss.detach()) * weight
            collected.append(metrics)
        with warnings.catch_warnings():  # a metric that is NaN in every micro-batch (no hard prompt) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            merged = {k: float(np.nanmean([m[k] for m in collected])) for k in collected[0]}
        merged["ratio_deviation_max"] = max(m["ratio_deviation_max"] for m in collected)
        self._metrics.update(merged)
        # the loop sums loss_sum over processes and divides by the step's target tokens: Σ_p total_p = the step's loss
        return {"loss_sum": total * num_step_tokens}

    def step_metrics(self) -> dict[str, float]:
        """Rollout and loss metrics of the step just taken (this process's view)."""
        return dict(self._metrics)

    # ----- per-prompt state and the rollout buffer in checkpoints -----------------------------------

    def method_state_dict(self) -> dict[str, Any]:
        """CEEH's accuracy history and length anchors, indexed by the prompt records' `index`."""
        return {"history": self.accuracy_history.tolist(), "anchor": self.anchor.tolist()}

    def load_method_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history and anchors saved by `method_state_dict`."""
        self.accuracy_history = np.array(state["history"], dtype=np.float64)
        self.anchor = np.array(state["anchor"], dtype=np.float64)

    def process_state_dict(self) -> dict[str, Any]:
        """This process's rollout buffer while later steps still use it (a run killed mid-rollout resumes on the
        same completions, advantages and π_old log-probs); nothing once the rollout is used up."""
        if self._rollout is None or self.global_step % self.settings.steps_per_rollout == 0:
            return {}
        cpu = [
            [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in mini]
            for mini in self._rollout["batches"]
        ]
        return {
            "rollout": {"index": self._rollout["index"], "batches": cpu, "metrics": self._rollout["metrics"]},
            "layout": self._layout(),
        }

    def _layout(self) -> dict[str, int]:
        """What a saved rollout buffer depends on: resuming with another layout cannot reuse it."""
        s = self.settings
        return {
            "num_iterations": s.num_iterations,
            "rollout_mini_batches": s.rollout_mini_batches,
            "world_size": self.world_size,
            "per_device_batch_size": self.cfg.per_device_batch_size,
            "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps,
            "num_generations": s.num_generations,
        }

    def load_process_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rollout buffer saved by `process_state_dict`."""
        saved = state.get("rollout")
        if saved is None:
            return
        if state.get("layout") != self._layout():
            raise ConfigError(
                f"the checkpoint's rollout buffer was made with {state.get('layout')}; this run uses "
                f"{self._layout()}: resume with the same settings"
            )
        device = self.accelerator.device
        saved["batches"] = [
            [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in mini]
            for mini in saved["batches"]
        ]
        self._rollout = saved
