"""On one fixed batch, llmkit's GRPO loss equals TRL's GRPOTrainer loss for matching settings.

Settings matched (TRL 1.16 `GRPOConfig` ↔ llmkit `GRPOMethodConfig`): epsilon 0.2 / epsilon_high 0.28 ↔
clip_low / clip_high; beta 0.04 (k3 KL) ↔ kl_coef 0.04 with low_var_kl (identical while |k3| < 10, where
llmkit clamps as verl does) with use_bias_correction_kl = False (TRL 1.16's default True multiplies the
KL term by the importance ratio; llmkit, like verl, does not); loss_type grpo / bnpo / dr_grpo ↔ loss_aggregation
seq-mean-token-mean /
token-mean / seq-mean-token-sum-norm (normalised by max_completion_length); the same advantages, old
and reference log-probs are fed to both. TRL runs in eval mode so it does not divide by its
accumulation steps; it is built with beta = 0 (else it loads a reference model from the hub) and
beta is set to 0.04 afterwards, the value its loss reads. Prompts have equal lengths: TRL left-pads prompts and
transformers' Llama takes
positions 0..T-1 regardless of padding, so unequal prompts would give the two layouts different positions.
Both score log-probs at the sampling temperature (TRL's `temperature` ↔ `GRPOMethodConfig.temperature`), checked
at T = 1 and T = 0.6. The last test takes a real second pass over a rollout (`num_iterations` 2 in both):
the stored π_old log-probs make the ratio leave 1, clipping acts, and the loss still equals TRL's.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from llmkit.data.sft import IGNORE_INDEX
from llmkit.models import ModelConfig, load_model
from llmkit.rl.core_algos import token_log_probs
from llmkit.rl.grpo import GRPOMethodConfig, GRPOTrainer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason="TRL is not installed (pip install trl)"
)

PAIRS = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm"}


def trl_trainer_for(tmp_path, model, tokenizer, trl_loss, temperature, beta=0.04, num_iterations=1, max_completion=8):
    """TRL's GRPOTrainer with settings matching llmkit's (built with beta 0, then beta set: no hub reference)."""
    from datasets import Dataset
    from trl import GRPOConfig
    from trl import GRPOTrainer as TRLGRPOTrainer

    config = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=max_completion,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type=trl_loss,
        use_bias_correction_kl=False,
        use_cpu=True,
        report_to=[],
        bf16=False,
        temperature=temperature,
        num_iterations=num_iterations,
    )
    trainer = TRLGRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["a", "b", "c", "d"]}),
        processing_class=tokenizer,
    )
    trainer.model.eval()
    trainer.beta = beta
    return trainer


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("trl_loss", sorted(PAIRS))
def test_grpo_loss_equals_trl(tmp_path, tokenizer, fresh_accelerate_state, trl_loss, temperature):
    torch.manual_seed(0)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    max_completion = 8
    trl_trainer = trl_trainer_for(tmp_path, model, tokenizer, trl_loss, temperature)

    prompt_ids = torch.randint(20, 500, (4, 5))
    completion_lengths = [3, 8, 5, 1]
    completion_ids = torch.randint(20, 500, (4, max_completion))
    completion_mask = torch.tensor([[1] * n + [0] * (max_completion - n) for n in completion_lengths])
    completion_ids = completion_ids * completion_mask + tokenizer.pad_token_id * (1 - completion_mask)
    advantages = torch.tensor([0.7, -0.7, 1.2, -1.2])
    with torch.no_grad():
        full = torch.cat([prompt_ids, completion_ids], 1)
        logits = model(
            input_ids=full, attention_mask=torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
        ).logits
        current = token_log_probs(logits[:, 4:-1] / temperature, completion_ids)  # log p of each completion token
    old = current + 0.3 * torch.randn(current.shape)  # ratios far enough from 1 that both clips act
    ref = current + 0.2 * torch.randn(current.shape)
    trl_inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum(),
    }
    trl_loss_value = trl_trainer._compute_loss(trl_trainer.model, trl_inputs)

    # llmkit's layout: prompt + completion in one right-padded row, labels on completion tokens
    labels = torch.full_like(full, IGNORE_INDEX)
    labels[:, 5:] = torch.where(completion_mask.bool(), completion_ids, IGNORE_INDEX)
    shifted = lambda x: torch.cat([torch.zeros(4, 4), x], 1)  # noqa: E731  (B, T-1): completion j at column 4 + j
    batch = {
        "input_ids": full,
        "attention_mask": torch.cat([torch.ones_like(prompt_ids), completion_mask], 1),
        "labels": labels,
        "advantages": advantages,
        "old_log_probs": shifted(old),
        "ref_log_probs": shifted(ref),
        "hard": torch.zeros(4, dtype=torch.bool),
    }
    settings = GRPOMethodConfig(
        num_generations=2,
        max_new_tokens=max_completion,
        clip_low=0.2,
        clip_high=0.28,
        kl_coef=0.04,
        kl_estimator="low_var_kl",
        loss_aggregation=PAIRS[trl_loss],
        temperature=temperature,
        dual_clip=0.0,
    )  # TRL has no dual clip
    ours, _ = GRPOTrainer.grpo_loss(
        types.SimpleNamespace(settings=settings, global_step=0, total_steps=1), model, batch
    )
    torch.testing.assert_close(ours, trl_loss_value, atol=1e-6, rtol=1e-5)


def test_second_pass_over_a_rollout_clips_and_equals_trl(tmp_path, tokenizer, fresh_accelerate_state):
    """num_iterations 2: step 0 (π_old = π_θ, ratio 1) updates the weights with a large learning rate; step 1
    reuses the same rollout and its stored π_old log-probs, so ratios leave [1 − ε_low, 1 + ε_high] and the
    loss equals TRL's `_compute_loss` on the same tensors with its num_iterations = 2 and T = 0.6."""
    from llmkit.train import TrainerConfig

    torch.manual_seed(0)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    prompts = [{"prompt": f"Add {i} and {i}.", "answer": str(2 * i), "index": i} for i in range(1, 5)]
    lengths = {len(tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) == 1  # equal prompt lengths: TRL's left padding and our right padding then share positions
    settings = GRPOMethodConfig(
        num_generations=2,
        max_new_tokens=8,
        temperature=0.6,
        num_iterations=2,
        advantage="grpo",
        loss_aggregation="token-mean",
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=0.0,
    )
    cfg = TrainerConfig(
        output_dir=str(tmp_path / "ours"),
        max_steps=2,
        per_device_batch_size=4,
        learning_rate=0.05,
        lr_scheduler="constant",
        save_final_model=False,
        max_grad_norm=0.0,
    )
    ours = GRPOTrainer(cfg, settings, model, tokenizer, prompts, lambda text, record: float(len(text) % 2 == 0))

    first = ours.step_batches(0)
    ours.training_step(ours.model, first, 0)
    assert ours.step_metrics()["ratio_deviation_max"] < 1e-5  # first pass: π_old is the sampling policy itself
    ours.optimizer.step()
    ours.optimizer.zero_grad(set_to_none=True)
    ours.global_step = 1
    second = ours.step_batches(1)
    assert second is first  # the same rollout, not a new one
    batch = second[0]
    loss, metrics = ours.grpo_loss(ours.model, batch)
    assert metrics["clip_fraction"] > 0 and metrics["ratio_deviation_max"] > 0.28

    prompt_len = lengths.pop()  # rows are prompt + completion, right-padded
    labels = batch["labels"]
    completion_mask = (labels[:, prompt_len:] != IGNORE_INDEX).long()
    completion_ids = torch.where(completion_mask.bool(), labels[:, prompt_len:], tokenizer.pad_token_id)
    trl_inputs = {
        "prompt_ids": batch["input_ids"][:, :prompt_len],
        "prompt_mask": torch.ones_like(batch["input_ids"][:, :prompt_len]),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": batch["advantages"],
        "old_per_token_logps": batch["old_log_probs"][:, prompt_len - 1 :],
        "num_items_in_batch": completion_mask.sum(),
    }
    trl_trainer = trl_trainer_for(
        tmp_path,
        ours.accelerator.unwrap_model(ours.model),
        tokenizer,
        "bnpo",
        0.6,
        beta=0.0,
        num_iterations=2,
        max_completion=completion_ids.shape[1],
    )
    ours.model.eval()  # TRL's loss is read in eval mode; the tiny model has no dropout, so the modes agree
    torch.testing.assert_close(ours.grpo_loss(ours.model, batch)[0], loss, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(loss, trl_trainer._compute_loss(trl_trainer.model, trl_inputs), atol=1e-6, rtol=1e-5)
