"""GRPO and CEEH building blocks against hand-computed numbers and synthetic reward streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmkit.rl import ceeh
from llmkit.rl.core_algos import (
    ADVANTAGE_ESTIMATORS,
    aggregate,
    clipped_policy_loss,
    entropy_from_logits,
    get,
    kl_k1,
    kl_low_var,
)


def test_grpo_and_drgrpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    dr = get(ADVANTAGE_ESTIMATORS, "drgrpo")(rewards, 4)
    assert dr.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    g = get(ADVANTAGE_ESTIMATORS, "grpo")(rewards, 4)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    assert g[:4].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)
    assert g[4:].tolist() == pytest.approx([0, 0, 0, 0])  # equal rewards: no signal, no NaN
    with pytest.raises(KeyError, match="choose one of"):
        get(ADVANTAGE_ESTIMATORS, "ppo")


def test_clipped_policy_loss_separate_low_high_clip():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_policy_loss(new, old, adv, clip_low=0.2, clip_high=0.28)
    # ρ=1.5, A>0: min(1.5, 1.28) → 1.28;  ρ=0.5, A<0: min(-0.5, -0.8) → -0.8;  inside the band: ρ·A
    assert (-loss).tolist()[0] == pytest.approx([1.28, -0.8, 1.1, -0.9], rel=1e-6)
    assert clipped.tolist()[0] == [1.0, 1.0, 0.0, 0.0]
    seq_adv, _ = clipped_policy_loss(new, old, torch.tensor([1.0]), 0.2, 0.28)
    assert seq_adv[0, 0].item() == pytest.approx(-1.28)  # (B,) advantages broadcast over tokens


def test_dual_clip_caps_negative_advantage_losses():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[5.0, 5.0, 2.0]]))
    adv = torch.tensor([[-1.0, 1.0, -1.0]])
    loss, clipped = clipped_policy_loss(new, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # ρ=5, A<0: −min(−5, −1.28) = 5, capped at −c·A = 3;  ρ=5, A>0: −1.28;  ρ=2, A<0: 2 (below the cap)
    assert loss.tolist()[0] == pytest.approx([3.0, -1.28, 2.0], rel=1e-6)
    assert clipped.tolist()[0] == [1.0, 1.0, 0.0]
    plain, _ = clipped_policy_loss(new, old, adv, clip_low=0.2, clip_high=0.28)
    assert plain.tolist()[0] == pytest.approx([5.0, -1.28, 2.0], rel=1e-6)
    far, _ = clipped_policy_loss(torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]))
    assert far.item() == pytest.approx(math.exp(20.0), rel=1e-5)  # log-ratio clamped at 20: finite


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    # k3 = r − log r − 1 with r = π_ref/π = 0.5
    assert kl_low_var(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl_low_var(torch.tensor([0.0]), torch.tensor([50.0])).item() == 10.0  # clamped


def test_loss_aggregations_on_hand_made_masks():
    loss = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx((6 / 4 + 4 / 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", norm_length=2).item() == pytest.approx((3 + 2) / 2)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = entropy_from_logits(logits)
    assert h[0].item() == pytest.approx(math.log(4))
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)


def test_history_ema_asymmetric_and_overwrite():
    hist = np.array([ceeh.UNSEEN, 0.5, 0.5, 0.0])
    new = ceeh.update_history(hist, np.array([0, 1, 2, 3]), np.array([0.25, 1.0, 0.0, 0.75]))
    assert new.tolist() == pytest.approx(
        [0.25, 0.2 * 1.0 + 0.8 * 0.5, 0.95 * 0.5, 0.75]
    )  # up 0.2, down 0.05, 0 overwritten
    assert hist[0] == ceeh.UNSEEN  # pure: the input is untouched


def test_hard_mask_uses_current_accuracy_against_history_mean():
    hist = np.array([0.5, 1.0, ceeh.UNSEEN, 0.5])  # mean 0.25: unseen prompts pull the threshold down
    assert ceeh.hard_mask(np.array([0.25, 0.3, 0.0]), hist).tolist() == [True, False, True]


def test_length_reward_formula_clip_and_skip():
    lengths, correct = np.array([50, 100, 200, 1000, 80]), np.array([True, True, True, True, False])
    r = ceeh.length_reward(lengths, correct, anchor=100, accuracy=0.8, history=0.5, beta=0.5)
    assert r.tolist() == pytest.approx([0.25, 0.0, -0.5, -0.9, 0.0])  # β(1 − L/L_x), clipped at −0.9; wrong → 0
    assert (
        ceeh.length_reward(lengths, correct, 100, accuracy=0.4, history=0.5).tolist() == [0.0] * 5
    )  # worse than history
    assert ceeh.length_reward(lengths, correct, 0, accuracy=1.0, history=0.5).tolist() == [0.0] * 5  # no anchor yet


def test_correct_always_beats_incorrect_on_random_streams():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 5000, size=8)
        correct = rng.random(8) < 0.5
        r_len = ceeh.length_reward(
            lengths,
            correct,
            anchor=float(rng.integers(1, 3000)),
            accuracy=rng.random(),
            history=rng.random(),
            beta=float(rng.choice([0.1, 0.5, 1.0])),
        )
        total = correct.astype(float) + r_len
        if correct.any() and (~correct).any():
            assert total[correct].min() > total[~correct].max()


def test_anchor_ema():
    assert ceeh.update_anchor(0.0, np.array([120, 80]), np.array([True, True])) == 80.0  # first visit: shortest correct
    assert ceeh.update_anchor(100.0, np.array([60, 90]), np.array([True, False])) == pytest.approx(0.2 * 60 + 0.8 * 100)
    assert ceeh.update_anchor(100.0, np.array([150]), np.array([True])) == pytest.approx(0.05 * 150 + 0.95 * 100)
    assert ceeh.update_anchor(100.0, np.array([10]), np.array([False])) == 100.0  # no correct answer: unchanged


def test_me_weights_and_bonus_standard_and_retain():
    hard = torch.tensor([True, False])
    w, scale = ceeh.me_entropy_weights(hard, schedule=0.5)
    assert w.tolist() == [5.0, 1.0] and scale == 0.5
    w_r, scale_r = ceeh.me_entropy_weights(hard, schedule=0.5, retain=True)
    assert w_r.tolist() == [3.0, 1.0] and scale_r == 1.0
    entropy = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # Σ w·H / Σ w = (5·1 + 5·3 + 1·2) / (5 + 5 + 1)
    assert ceeh.me_entropy_bonus(entropy, mask, w).item() == pytest.approx(22 / 11)
    # an all-hard micro-batch gets no relative push (weights cancel)
    assert ceeh.me_entropy_bonus(entropy, mask, torch.tensor([5.0, 5.0])).item() == pytest.approx(6 / 3)
    assert (
        ceeh.cosine_schedule(0, 10) == 1.0
        and ceeh.cosine_schedule(5, 10) == pytest.approx(0.5)
        and ceeh.cosine_schedule(10, 10) == pytest.approx(0.0)
    )


def test_ea_advantages_bonus_is_bounded_and_only_on_hard():
    adv = torch.tensor([1.0, -1.0, 1.0])
    entropy = torch.tensor([[0.5, 3.0], [3.0, 3.0], [3.0, 3.0]], requires_grad=True)
    hard = torch.tensor([True, True, False])
    out = ceeh.ea_advantages(adv, entropy, hard, alpha=0.4, kappa=2.0)
    # min(0.4·0.5, 1/2) = 0.2; min(0.4·3, 0.5) = 0.5; easy prompt: unchanged
    torch.testing.assert_close(out, torch.tensor([[1.2, 1.5], [-0.5, -0.5], [1.0, 1.0]]))
    assert (out * adv[:, None] >= 0).all()  # never flips the sign (|bonus| ≤ |A|/2)
    assert entropy.requires_grad and not out.requires_grad  # sg(H): no gradient flows through the bonus


def test_nag_formula():
    assert ceeh.nag(0.9, 50, 1.0, 100) == pytest.approx(100 * 0.1 * math.sqrt(0.5))
    assert ceeh.nag(92.1, 2170, 91.3, 3701) == pytest.approx(-0.56, abs=0.01)  # MATH500 CEEH-ME row
    with pytest.raises(ValueError):
        ceeh.nag(0.9, 120, 1.0, 100)


def test_verifiers():
    from llmkit.rl.rewards import boxed_reward, gsm8k_reward, last_boxed, toy_arithmetic_prompts

    assert last_boxed("so \\boxed{\\frac{1}{2}} and then \\boxed{42}") == "42"
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{12") is None and last_boxed("no box") is None
    assert boxed_reward("The answer is \\boxed{1,234}.", {"answer": "1234"}) == 1.0
    assert boxed_reward("\\boxed{x + 1}", {"answer": "x  + 1"}) == 1.0
    assert boxed_reward("\\boxed{41}", {"answer": "42"}) == 0.0
    assert gsm8k_reward("... so she has 18 dollars. #### 18", {"answer": "Janet ... #### 18"}) == 1.0
    assert gsm8k_reward("The answer is 17.", {"answer": "18"}) == 0.0
    prompts = toy_arithmetic_prompts(50, seed=3)
    assert prompts == toy_arithmetic_prompts(50, seed=3) and [p["index"] for p in prompts] == list(range(50))
    for p in prompts:
        a, op, b = p["question"][8:-1].split()
        assert int(p["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_evaluate_policy_counts_avg_at_n_pass_at_k_and_nag():
    from llmkit.generation.types import Completion, GenerationOutput
    from llmkit.rl.evaluate import evaluate_policy, with_nag

    class Scripted:
        """Prompt 0: 2 of 4 samples right (short); prompt 1: none right."""

        def generate(self, prompts, params):
            texts = [["\\boxed{1}", "\\boxed{2}", "\\boxed{1}", "x"], ["no", "no", "no", "no"]]
            return [
                GenerationOutput("", [Completion(t, [0] * (3 if t.startswith("\\boxed") else 5), "stop") for t in row])
                for row in texts
            ]

    from llmkit.rl.rewards import boxed_reward

    prompts = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "7"}]
    r = evaluate_policy(Scripted(), prompts, boxed_reward, n=4, ks=(1, 2, 4))
    assert r["accuracy"] == pytest.approx(2 / 8)
    assert r["pass@1"] == pytest.approx((0.5 + 0) / 2)
    assert r["pass@2"] == pytest.approx((1 - (2 * 1) / (4 * 3) + 0) / 2)  # 1 - C(2,2)/C(4,2) = 5/6
    assert r["pass@4"] == pytest.approx(0.5)
    assert r["length"] == pytest.approx((3 + 3 + 3 + 5 + 5 * 4) / 8) and r["correct_length"] == 3
    assert with_nag(r, {"accuracy": 0.5, "length": 8.0})["nag"] == pytest.approx(
        100 * 0.5 * math.sqrt(1 - r["length"] / 8)
    )
    assert math.isnan(with_nag(r, {"accuracy": 0.5, "length": 1.0})["nag"])


# ----- the whole GRPO/CEEH objective on a hand-made toy ------------------------------------------
# Two completions of one group (hard, easy), three token slots; the second completion has two tokens.
# A = (0.5, −0.5), π_old = π_θ (ratio 1), so the policy term of each token is −Â.
TOY_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
TOY_ENTROPY = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.8, 9.9]])  # 9.9 is masked out
TOY_LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-0.7, -0.2, -3.0]])
TOY_ADV = torch.tensor([0.5, -0.5])
TOY_HARD = torch.tensor([True, False])


def toy_objective(**settings):
    from llmkit.rl.grpo import GRPOMethodConfig, grpo_objective

    schedule = settings.pop("schedule", 1.0)
    return grpo_objective(
        TOY_LOGP, TOY_ENTROPY, TOY_MASK, TOY_ADV, TOY_HARD, GRPOMethodConfig(**settings), schedule=schedule
    )


def test_objective_plain_grpo_by_hand():
    loss, metrics = toy_objective()
    assert loss.item() == pytest.approx(-(3 * 0.5 - 2 * 0.5) / 5)  # token-mean of −A
    assert metrics["entropy"] == pytest.approx((1 + 2 + 0.5 + 0.3 + 0.8) / 5)
    assert metrics["entropy_hard"] == pytest.approx(3.5 / 3) and metrics["entropy_easy"] == pytest.approx(1.1 / 2)
    assert metrics["ratio_deviation_max"] == 0.0 and metrics["clip_fraction"] == 0.0


def test_objective_ea_by_hand():
    # hard row: bonus min(0.4·H, |A|/κ = 0.25) = (0.25, 0.25, 0.2) → Â = (0.75, 0.75, 0.70); easy row unchanged
    loss, metrics = toy_objective(entropy_mode="ea", ea_alpha=0.4, ea_kappa=2.0)
    assert loss.item() == pytest.approx(-(0.75 + 0.75 + 0.70 - 0.5 - 0.5) / 5)
    assert metrics["ea_bonus_fraction"] == pytest.approx(3 / 5)


def test_objective_me_by_hand():
    # weights 5 (hard) / 1 (easy), scale s(t) = 0.5: bonus = (5·3.5 + 1.1) / (5·3 + 2) = 18.6 / 17
    loss, _ = toy_objective(entropy_mode="me", me_coef=0.001, me_factor=5.0, schedule=0.5)
    assert loss.item() == pytest.approx(-0.1 - 0.001 * 0.5 * 18.6 / 17, rel=1e-6)
    # retain: hard weight 1 + 4·0.5 = 3, no global scale: (3·3.5 + 1.1) / (3·3 + 2) = 11.6 / 11
    loss, _ = toy_objective(entropy_mode="me", me_coef=0.001, me_factor=5.0, me_retain=True, schedule=0.5)
    assert loss.item() == pytest.approx(-0.1 - 0.001 * 11.6 / 11, rel=1e-6)


def test_objective_me_gradient_flows_to_entropy_with_its_weights():
    from llmkit.rl.grpo import GRPOMethodConfig, grpo_objective

    entropy = TOY_ENTROPY.clone().requires_grad_(True)
    loss, _ = grpo_objective(
        TOY_LOGP, entropy, TOY_MASK, TOY_ADV, TOY_HARD, GRPOMethodConfig(entropy_mode="me", me_coef=0.001), schedule=0.5
    )
    loss.backward()
    expected = -0.001 * 0.5 * torch.tensor([[5.0, 5.0, 5.0], [1.0, 1.0, 0.0]]) / 17
    torch.testing.assert_close(entropy.grad, expected)


def test_objective_clips_against_stored_old_log_probs():
    from llmkit.rl.grpo import GRPOMethodConfig, grpo_objective

    old = TOY_LOGP - torch.log(torch.tensor([[1.5, 1.0, 1.0], [1.0, 0.5, 1.0]]))  # ρ = 1.5 (A > 0), 0.5 (A < 0)
    loss, metrics = grpo_objective(
        TOY_LOGP, TOY_ENTROPY, TOY_MASK, TOY_ADV, TOY_HARD, GRPOMethodConfig(), old_log_probs=old
    )
    # row 0: −(1.28·0.5), −0.5, −0.5; row 1: −min(−0.5, −0.5) = 0.5, −min(0.5·−0.5, 0.8·−0.5) = 0.4
    assert loss.item() == pytest.approx((-0.64 - 0.5 - 0.5 + 0.5 + 0.4) / 5, rel=1e-6)
    assert metrics["clip_fraction"] == pytest.approx(2 / 5) and metrics["ratio_deviation_max"] == pytest.approx(0.5)


def test_sampling_logits_scales_log_probs_and_entropy():
    from llmkit.rl.core_algos import sampling_logits, token_log_probs_and_entropy

    logits = torch.tensor([[[math.log(1.0), math.log(3.0)]]])  # p = (0.25, 0.75) at T = 1
    logp, h = token_log_probs_and_entropy(sampling_logits(logits, 0.5), torch.tensor([[1]]))
    # T = 0.5 squares the odds: p ∝ (1, 9)
    assert logp.item() == pytest.approx(math.log(0.9))
    assert h.item() == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)))
    with pytest.raises(ValueError, match="temperature"):
        sampling_logits(logits, 0.0)
