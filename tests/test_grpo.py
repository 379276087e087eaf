"""GRPOTrainer plumbing on a tiny model: rollouts, per-prompt state, and micro-batch weighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmkit.models import ModelConfig, load_model
from llmkit.rl.grpo import GRPOMethodConfig, GRPOTrainer, Rollout
from llmkit.train import TrainerConfig


def even_length_reward(text, record):
    """A reward the random tiny model earns about half the time."""
    return float(len(text) % 2 == 0)


def make_trainer(tmp_path, tokenizer, settings=None, **overrides):
    cfg = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        lr_scheduler="constant",
        save_final_model=False,
    )
    cfg.update(overrides)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    prompts = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "index": 10 + i} for i in range(8)]
    return GRPOTrainer(
        TrainerConfig(**cfg),
        settings or GRPOMethodConfig(max_new_tokens=12),
        model,
        tokenizer,
        prompts,
        even_length_reward,
    )


def test_grpo_steps_log_rollout_metrics_and_update_state(tmp_path, tokenizer, fresh_accelerate_state):
    trainer = make_trainer(
        tmp_path, tokenizer, GRPOMethodConfig(max_new_tokens=12, entropy_mode="me", length_reward=True)
    )
    trainer.train()
    rows = [r for r in trainer.history if "loss" in r]
    assert len(rows) == 2
    for key in ("reward", "accuracy", "completion_length", "hard_fraction", "entropy", "clip_fraction"):
        assert key in rows[0] and np.isfinite(rows[0][key])
    seen = trainer.accuracy_history[10:18].copy()
    assert (seen >= 0).all() and (trainer.accuracy_history[:10] == -1).all()  # state by the stable index, all 8 seen
    state = trainer.method_state_dict()
    trainer.accuracy_history[:] = 0
    trainer.load_method_state_dict(state)
    assert trainer.accuracy_history[10:18].tolist() == seen.tolist()


def grads_after(trainer, micro_batches, tokens):
    trainer.model.zero_grad(set_to_none=True)
    trainer.training_step(trainer.model, micro_batches, tokens)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_micro_batch_split_does_not_change_the_gradient(tmp_path, tokenizer, fresh_accelerate_state, aggregation):
    """Two micro-batches of one group each give the gradient of one micro-batch holding both groups."""
    settings = GRPOMethodConfig(num_generations=2, max_new_tokens=8, loss_aggregation=aggregation, advantage="grpo")
    trainer = make_trainer(tmp_path, tokenizer, settings, gradient_accumulation_steps=1)
    rng = np.random.default_rng(0)
    prompt_ids = [[1, 5, 6, 7], [1, 8, 9], [1, 5, 6, 7], [1, 8, 9]]
    completion_ids = [rng.integers(20, 200, size=k).tolist() for k in (3, 6, 2, 5)]
    full = Rollout(
        prompt_ids,
        completion_ids,
        [False] * 4,
        np.array([1, 0, 0, 1], bool),
        np.array([1.0, 0.0, 0.0, 1.0]),
        np.array([False] * 4),
    )
    halves = [
        Rollout(prompt_ids[a:b], completion_ids[a:b], [False] * 2, full.correct[a:b], full.rewards[a:b], full.hard[a:b])
        for a, b in ((0, 2), (2, 4))
    ]
    policy = trainer.accelerator.unwrap_model(trainer.model)

    def tensors(r):
        batch = trainer._tensors(r)
        batch["old_log_probs"] = trainer._log_probs(policy, batch) + 0.05  # ratio ≠ 1, so clipping can matter
        return batch

    tokens = sum(len(c) for c in completion_ids)
    split = grads_after(trainer, [tensors(h) for h in halves], tokens)
    whole = grads_after(trainer, [tensors(full)], tokens)
    assert whole and any(g.abs().sum() > 0 for g in whole.values())
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-4)


def test_on_policy_loss_needs_no_old_policy_pass(tmp_path, tokenizer, fresh_accelerate_state):
    """Without `old_log_probs` the loss uses log π_θ detached: same loss and gradient as a separate
    old-policy forward."""
    settings = GRPOMethodConfig(num_generations=2, max_new_tokens=8, advantage="grpo")
    trainer = make_trainer(tmp_path, tokenizer, settings, gradient_accumulation_steps=1)
    rng = np.random.default_rng(1)
    completion_ids = [rng.integers(20, 200, size=k).tolist() for k in (4, 2)]
    rollout = Rollout(
        [[1, 5, 6], [1, 5, 6]],
        completion_ids,
        [False, False],
        np.array([1, 0], bool),
        np.array([1.0, 0.0]),
        np.array([False, False]),
    )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy.eval()  # no dropout, so the separate pass sees exactly the same function
    implicit = trainer._tensors(rollout)
    explicit = dict(implicit, old_log_probs=trainer._log_probs(policy, implicit))
    tokens = sum(len(c) for c in completion_ids)
    a, b = grads_after(trainer, [implicit], tokens), grads_after(trainer, [explicit], tokens)
    assert a and any(g.abs().sum() > 0 for g in a.values())
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-7, rtol=1e-5)
    assert "old_log_probs" not in trainer.step_batches(0)[0]  # the loop itself does not make the extra pass


def test_ea_bonus_acts_only_on_hard_groups_with_mixed_rewards(tmp_path, tokenizer, fresh_accelerate_state):
    """EA changes the advantages of a hard group with right and wrong answers; an easy or all-wrong group is untouched.

    This is why EA can coincide with length-penalty RL on a model that rarely answers right: a hard
    prompt's group is then usually all wrong (A = 0), and a prompt with a right answer is rarely hard.
    """
    settings = GRPOMethodConfig(num_generations=2, max_new_tokens=8, advantage="drgrpo", entropy_mode="ea")
    trainer = make_trainer(tmp_path, tokenizer, settings, gradient_accumulation_steps=1)
    completion_ids = [[30, 31, 32], [40, 41], [50, 51, 52], [60, 61]]
    prompts = [[1, 5, 6], [1, 5, 6], [1, 8, 9], [1, 8, 9]]
    cases = {  # (rewards, hard) -> fraction of completion tokens whose advantage EA changes
        "hard, mixed": ([1.0, 0.0, 0.0, 0.0], [True, True, True, True], 5 / 10),
        "easy, mixed": ([1.0, 0.0, 1.0, 0.0], [False] * 4, 0.0),
        "hard, all wrong": ([0.0] * 4, [True] * 4, 0.0),
    }
    for name, (rewards, hard, expected) in cases.items():
        rollout = Rollout(
            prompts, completion_ids, [False] * 4, np.array(rewards) >= 1, np.array(rewards), np.array(hard)
        )
        _, metrics = trainer.grpo_loss(trainer.model, trainer._tensors(rollout))
        assert metrics["ea_bonus_fraction"] == pytest.approx(expected), name


def rollout_view(trainer, step):
    """(hard mask, advantages, rewards-per-completion) of a step's micro-batches, concatenated."""
    batches = trainer.step_batches(step)
    return (torch.cat([b["hard"] for b in batches]), torch.cat([b["advantages"] for b in batches]), batches)


def test_state_is_frozen_for_the_whole_step(tmp_path, tokenizer, fresh_accelerate_state):
    """2 micro-batches × 2 prompts give the same hard mask, advantages and loss as 1 × 4: every prompt of the
    step is compared with the history from before the step, and the history moves once, after it."""
    settings = GRPOMethodConfig(max_new_tokens=12, num_generations=4, length_reward=True, entropy_mode="ea")
    views, losses, states = [], [], []
    for accum, batch in ((2, 2), (1, 4)):
        torch.manual_seed(0)
        trainer = make_trainer(
            tmp_path / f"a{accum}", tokenizer, settings, gradient_accumulation_steps=accum, per_device_batch_size=batch
        )
        # a history whose mean (0.5) sits inside the range of this step's accuracies, and anchors that are set
        trainer.accuracy_history[:] = 0.5
        trainer.anchor[:] = 6.0
        hard, advantages, batches = rollout_view(trainer, 0)
        tokens = sum(int((b["labels"] != -100).sum()) for b in batches)
        losses.append(trainer.training_step(trainer.model, batches, tokens)["loss_sum"] / tokens)
        views.append((hard, advantages))
        states.append((trainer.accuracy_history.copy(), trainer.anchor.copy(), trainer.step_metrics()["accuracy"]))
    (hard_a, adv_a), (hard_b, adv_b) = views
    assert torch.equal(hard_a, hard_b)
    assert 0 < hard_a.float().mean() < 1  # the mask separates prompts, so an in-step update would show
    torch.testing.assert_close(adv_a, adv_b)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(states[0][0], states[1][0])
    np.testing.assert_allclose(states[0][1], states[1][1])


def test_one_iteration_keeps_the_ratio_at_one_and_makes_no_old_policy_pass(tmp_path, tokenizer, fresh_accelerate_state):
    trainer = make_trainer(
        tmp_path, tokenizer, GRPOMethodConfig(max_new_tokens=8, num_generations=2), gradient_accumulation_steps=1
    )
    trainer.train()
    rows = [r for r in trainer.history if "loss" in r]
    assert [r["ratio_deviation_max"] for r in rows] == [0.0, 0.0] and all(r["clip_fraction"] == 0 for r in rows)
    assert all("reward" in r for r in rows)  # every step had its own rollout


def test_rollout_reuse_schedule_and_clipping(tmp_path, tokenizer, fresh_accelerate_state):
    """num_iterations 2 × 2 mini-batches: 4 optimizer steps per rollout, mini-batches 0, 1, 0, 1 of one rollout
    (the prompts steps 0 and 1 would have with no reuse), π_old stored once; later passes move the ratio."""
    settings = GRPOMethodConfig(max_new_tokens=8, num_generations=2, num_iterations=2, rollout_mini_batches=2)
    trainer = make_trainer(
        tmp_path, tokenizer, settings, gradient_accumulation_steps=1, max_steps=4, learning_rate=0.05
    )
    generated = []
    original = trainer.make_rollout
    trainer.make_rollout = lambda r: generated.append(r) or original(r)
    trainer.train()
    assert generated == [0]
    rows = [r for r in trainer.history if "loss" in r]
    assert [(r["iteration"], r["mini_batch"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert "reward" in rows[0] and "reward" not in rows[1]
    assert rows[0]["ratio_deviation_max"] < 1e-5  # mini-batch 0 before any update
    assert max(r["ratio_deviation_max"] for r in rows[1:]) > 0.01
    assert (trainer.accuracy_history[10:18] >= 0).sum() == 4  # 2 mini-batches × 2 prompts, state updated once


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        GRPOMethodConfig(temperature=0.0)
    with pytest.raises(ValueError, match="num_iterations"):
        GRPOMethodConfig(num_iterations=0)


def test_rollouts_must_not_straddle_epochs(tmp_path, tokenizer, fresh_accelerate_state):
    from llmkit.errors import ConfigError

    with pytest.raises(
        ConfigError, match="must divide"
    ):  # 8 prompts / 2 per step = 4 steps; 3 mini-batches do not divide 4
        make_trainer(
            tmp_path,
            tokenizer,
            GRPOMethodConfig(max_new_tokens=8, rollout_mini_batches=3),
            gradient_accumulation_steps=1,
        )


def test_mid_rollout_resume_refuses_a_missing_or_foreign_buffer(tmp_path, tokenizer, fresh_accelerate_state):
    from llmkit.errors import ConfigError

    settings = GRPOMethodConfig(max_new_tokens=8, num_generations=2, num_iterations=2)
    trainer = make_trainer(tmp_path / "a", tokenizer, settings, gradient_accumulation_steps=1)
    with pytest.raises(ConfigError, match="middle of rollout 0"):
        trainer.step_batches(1)  # step 1 reuses rollout 0, which this process never made or loaded
    trainer.step_batches(0)
    trainer.global_step = 1
    state = trainer.process_state_dict()
    assert state["rollout"]["index"] == 0 and state["layout"]["num_iterations"] == 2
    other = make_trainer(
        tmp_path / "b",
        tokenizer,
        GRPOMethodConfig(max_new_tokens=8, num_generations=2, num_iterations=3),
        gradient_accumulation_steps=1,
    )
    with pytest.raises(ConfigError, match="rollout buffer was made with"):
        other.load_process_state_dict(state)


def test_kl_reference_is_the_base_model_under_lora(tmp_path, tokenizer, fresh_accelerate_state):
    """With LoRA the reference log-probs come from the adapter-free model: equal to the policy's before any
    update (LoRA's B starts at 0), different after one, and the KL term is logged."""
    from llmkit.models import LoraAdapterConfig, apply_lora

    settings = GRPOMethodConfig(max_new_tokens=8, num_generations=2, kl_coef=0.1, advantage="grpo")
    cfg = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=0.05,
        lr_scheduler="constant",
        save_final_model=False,
    )
    model = apply_lora(
        load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer)), LoraAdapterConfig(r=4, alpha=8)
    )
    prompts = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "index": i} for i in range(4)]
    trainer = GRPOTrainer(TrainerConfig(**cfg), settings, model, tokenizer, prompts, even_length_reward)
    batch = trainer.step_batches(0)[0]
    policy = trainer.accelerator.unwrap_model(trainer.model)
    mask = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(batch["ref_log_probs"][mask], trainer._log_probs(policy, batch)[mask])
    trainer.train()
    batch = trainer.step_batches(2)[0]
    later = trainer._log_probs(policy, batch)
    m = batch["labels"][:, 1:] != -100
    assert (later[m] - batch["ref_log_probs"][m]).abs().max() > 1e-4
    assert all(np.isfinite(r["kl"]) for r in trainer.history if "loss" in r)
