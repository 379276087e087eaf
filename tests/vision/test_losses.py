"""Each loss against numbers worked out by hand (closed forms written with `math`, not the code under test)."""

import math

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.loops.distill import aligned_step_gradients
from llmkit.vision.losses import DPCLoss, DualHeadDistillLoss, EnergyDetectorLoss, TemperatureDetectorLoss
from llmkit.vision.losses import functional as LF
from llmkit.vision.models import MLP, Outputs


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) < tol


# -- DPC (evidential) ---------------------------------------------------------------------------


def test_dirichlet_kl_to_uniform_by_hand():
    # KL(Dir(1,2) || Dir(1,1)) = lnΓ(3) − lnΓ(2) − lnΓ(1) − lnΓ(2) + (2−1)(ψ(2) − ψ(3)) = ln 2 − 1/2
    assert close(LF.dirichlet_kl_to_uniform(torch.tensor([[1.0, 2.0]]))[0], math.log(2) - 0.5)
    assert close(LF.dirichlet_kl_to_uniform(torch.ones(1, 5))[0], 0.0)


def test_calibrated_probabilities_break_translation_invariance():
    # K = 2 → c = 5; logits (0, ln 5) → α = (6, 10) → p̂ = (0.375, 0.625)
    p = LF.calibrated_probabilities(torch.tensor([[0.0, math.log(5)]]))
    assert close(p[0, 0], 0.375) and close(p[0, 1], 0.625)
    # Shifting all logits up makes the prediction *more* confident (softmax would not change).
    shifted = LF.calibrated_probabilities(torch.tensor([[1.0, math.log(5) + 1]]))
    assert shifted[0, 1] > p[0, 1]


def test_dpc_loss_by_hand():
    # K = 2, logits (0, 0), label 0: α = (6, 6), S = 12 → log S − log α_0 = ln 2.
    # α̃ = (1, 6/5) → KL(Dir(1, 1.2) ‖ Dir(1, 1)) = ln 1.2 − 0.2/1.2  (Γ(2.2) = 1.2 Γ(1.2), ψ(2.2) = ψ(1.2) + 1/1.2)
    expected = math.log(2) + (0.5 / 2) * (math.log(1.2) - 0.2 / 1.2)
    logits, label = torch.zeros(1, 2), torch.tensor([0])
    assert close(LF.dpc_loss(logits, label), expected)
    assert close(DPCLoss()(Outputs(logits, (logits,), logits), label), expected)
    # Soft one-hot target gives the same value; 'sum' of two identical rows doubles it.
    assert close(LF.dpc_loss(logits, torch.tensor([[1.0, 0.0]])), expected)
    assert close(LF.dpc_loss(torch.zeros(2, 2), torch.tensor([0, 0]), reduction="sum"), 2 * expected)


def test_dpc_loss_bad_input():
    with pytest.raises(VisionError, match="labels must lie"):
        LF.dpc_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(VisionError, match="rows"):
        LF.dpc_loss(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(VisionError, match="logits must be"):
        LF.dpc_loss(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(VisionError, match="reduction"):
        LF.dpc_loss(torch.zeros(1, 3), torch.tensor([0]), reduction="avg")


def test_label_margin_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
    assert LF.label_margin(logits, torch.tensor([0, 1])).tolist() == [1.0, -2.0]


# -- open-set detector losses -------------------------------------------------------------------


def test_energy_score_and_margin_loss_by_hand():
    assert close(LF.energy_score(torch.zeros(1, 2))[0], -math.log(2))
    # C = 2. Known row: known logits (0, 0) → E_in = −ln 2; unknown row: (10, 10) → E_out = −10 − ln 2.
    logits = torch.tensor([[0.0, 0.0, 5.0], [10.0, 10.0, 0.0]])
    target = torch.tensor([0, 2])
    expected = (-math.log(2) + 25) ** 2 + (-7 + 10 + math.log(2)) ** 2
    assert close(LF.energy_margin_loss(logits, target, 2), expected, 1e-3)
    ce = -math.log(1 / (2 + math.exp(5))) / 2 + -math.log(1 / (2 * math.exp(10) + 1)) / 2
    assert close(LF.eaoa_detector_loss(logits, target, 2), ce + 0.01 * expected, 1e-3)
    assert close(EnergyDetectorLoss(2)(logits, target), ce + 0.01 * expected, 1e-3)


def test_eaoa_detector_loss_is_plain_ce_before_any_unknown():
    logits, target = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0])
    assert close(LF.eaoa_detector_loss(logits, target, 2), -math.log(math.e / (math.e + 2)))
    with pytest.raises(VisionError, match="C\\+1"):
        LF.eaoa_detector_loss(torch.zeros(1, 2), target, 2)


def test_temperature_cross_entropy_by_hand():
    # logits (1, 0) / 0.5 = (2, 0); CE for class 0 = ln(1 + e^−2)
    assert close(
        LF.temperature_cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 0.5), math.log(1 + math.exp(-2))
    )
    # Per-example temperatures: row 2 uses T = 1 → ln(1 + e^−1)
    per_row = LF.temperature_cross_entropy(
        torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 0]), torch.tensor([0.5, 1.0]), reduction="none"
    )
    assert close(per_row[1], math.log(1 + math.exp(-1)))
    loss = TemperatureDetectorLoss(1, known_temperature=0.5, unknown_temperature=1.0)
    assert close(loss(torch.tensor([[0.0, 1.0]]), torch.tensor([1])), math.log(1 + math.exp(-1)))
    with pytest.raises(VisionError, match="positive"):
        LF.temperature_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), 0.0)


def test_complementary_label_loss_by_hand():
    # softmax(0, 0) = (½, ½): −log(1 − ½) = ln 2
    assert close(LF.complementary_label_loss(torch.zeros(1, 2), torch.tensor([1])), math.log(2))


# -- distillation -------------------------------------------------------------------------------


def test_kd_loss_by_hand():
    # T = 1, teacher (½, ½), student (¾, ¼): KL = ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3)
    student, teacher = torch.tensor([[math.log(3), 0.0]]), torch.zeros(1, 2)
    assert close(LF.kd_loss(student, teacher, 1.0), 0.5 * math.log(4 / 3))
    assert close(LF.kd_loss(teacher, teacher, 4.0), 0.0)


def test_binary_kl_by_hand():
    # One class: σ(0) = ½ vs σ(ln 3) = ¾ → ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3); at T = 2 logits double, ×T² = 4.
    assert close(LF.binary_kl(torch.tensor([[math.log(3)]]), torch.zeros(1, 1), 1.0), 0.5 * math.log(4 / 3))
    assert close(LF.binary_kl(torch.tensor([[2 * math.log(3)]]), torch.zeros(1, 1), 2.0), 4 * 0.5 * math.log(4 / 3))


def test_binary_kl_norm_by_hand():
    # s − t = 2, T = 2 → x = 1; KL(Bern(½) ‖ Bern(σ(1))) = −ln 2 − ½ ln σ(1) − ½ ln(1 − σ(1)); ×T² = 4
    sig = 1 / (1 + math.exp(-1))
    per_element = -math.log(2) - 0.5 * math.log(sig) - 0.5 * math.log(1 - sig)
    student, teacher = torch.tensor([[3.0, 0.5]]), torch.tensor([[1.0, 0.5]])  # second class: difference 0
    assert close(LF.binary_kl_norm(student, teacher, 2.0), 4 * per_element)
    assert close(LF.binary_kl_norm(teacher, teacher, 2.0), 0.0)


def test_binary_kl_norm_gradient_pushes_student_towards_teacher():
    student = torch.tensor([[3.0, -2.0]], requires_grad=True)
    LF.binary_kl_norm(student, torch.zeros(1, 2)).backward()
    assert student.grad[0, 0] > 0 and student.grad[0, 1] < 0  # descent lowers 3, raises −2


def test_project_conflicting_by_hand():
    task = torch.tensor([1.0, 0.0])
    assert LF.project_conflicting(task, torch.tensor([-1.0, 1.0])).tolist() == [0.0, 1.0]
    assert LF.project_conflicting(task, torch.tensor([1.0, 1.0])).tolist() == [1.0, 1.0]  # no conflict: unchanged
    with pytest.raises(VisionError, match="shapes"):
        LF.project_conflicting(task, torch.zeros(3))


def test_dhkd_heads_get_separate_losses():
    torch.manual_seed(0)
    model = MLP(4, 3, hidden=(5,), num_heads=2)
    x, y, teacher = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 3)
    parts = DualHeadDistillLoss("dhkd")(model(x), y, teacher)
    parts.task.backward(retain_graph=True)
    assert model.heads[1].weight.grad is None  # CE never reaches the auxiliary head
    model.zero_grad(set_to_none=True)
    parts.aux.backward()
    assert model.heads[0].weight.grad is None  # BinaryKL-Norm never reaches the CE head
    assert model.heads[1].weight.grad.abs().sum() > 0


def test_distillation_parts_modes_and_errors():
    logits = torch.tensor([[math.log(3), 0.0]])
    teacher = torch.zeros(1, 2)
    ce = math.log(4 / 3)  # −log ¾ for label 0
    parts = LF.distillation_parts(logits, torch.tensor([0]), teacher, mode="kd", kd_temperature=1.0)
    assert close(parts.task, ce) and close(parts.aux, 0.5 * math.log(4 / 3))
    assert close(LF.distillation_parts(logits, torch.tensor([0]), teacher, mode="ce").aux, 0.0)
    # No labelled rows: the CE part is zero, distillation still applies.
    none = LF.distillation_parts(
        logits, torch.tensor([0]), teacher, mode="kd", kd_temperature=1.0, labelled_mask=torch.tensor([False])
    )
    assert close(none.task, 0.0) and none.aux > 0
    with pytest.raises(VisionError, match="auxiliary head"):
        LF.distillation_parts(logits, torch.tensor([0]), teacher, mode="dhkd")
    with pytest.raises(VisionError, match="unknown distillation mode"):
        DualHeadDistillLoss("fitnet")


def test_aligned_gradients_never_oppose_the_task_gradient():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    task = (w * torch.tensor([1.0, 0.0])).sum()  # g_task = (1, 0)
    aux = (w * torch.tensor([-2.0, 1.0])).sum()  # g_aux = (−2, 1): conflicts
    aligned_step_gradients([w], task, aux)
    assert w.grad.tolist() == [1.0, 1.0]  # (1, 0) + (0, 1)


def test_edl_loss_by_hand():
    # K = 2, logits 0: α = (2, 2), S = 4 → ln 4 − ln 2 = ln 2; α̃ = (1, 2) → KL = ln 2 − ½
    assert close(LF.edl_loss(torch.zeros(1, 2), torch.tensor([0])), 2 * math.log(2) - 0.5)
    assert close(LF.edl_loss(torch.zeros(1, 2), torch.tensor([0]), annealing=0.0), math.log(2))


# -- BLDR ---------------------------------------------------------------------------------------


def test_bldr_over_parameterised_probabilities_by_hand():
    from llmkit.vision.losses.noisy import over_parameterised_probabilities

    logits, y = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    # u² on the label adds (almost) 1: (½ + 0.9999, ½) / 1.9999
    q = over_parameterised_probabilities(logits, y, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2))
    assert close(q[0, 0], 1.4999 / 1.9999) and close(q[0, 1], 0.5 / 1.9999)
    # v² = ¼ off the label removes mass there: (½, ¼) → (⅔, ⅓)
    q = over_parameterised_probabilities(logits, y, torch.zeros(1, 2), torch.tensor([[0.0, 0.5]]))
    assert close(q[0, 0], 2 / 3) and close(q[0, 1], 1 / 3)


def test_bldr_losses_by_hand():
    from llmkit.vision.losses.noisy import (
        bldr_negative_loss,
        bldr_positive_loss,
        complementary_targets,
        nl_sample_weights,
    )

    assert complementary_targets(torch.tensor([[0.0, 5.0, 1.0]]), torch.tensor([0])).tolist() == [[0, 0, 1]]
    # Flat 3-class NL head, label 0 (also the argmax): −2·log(1 − ⅓) = 2 ln 1.5
    assert close(bldr_negative_loss(torch.zeros(1, 3), torch.tensor([0])), 2 * math.log(1.5))
    # u = v = 0, no ratio or balance term: plain CE on softmax
    logits = torch.tensor([[math.log(3), 0.0]])
    assert close(
        bldr_positive_loss(logits, torch.tensor([0]), torch.zeros(1, 2), torch.zeros(1, 2), balance_weight=0.0),
        -math.log(0.75),
    )
    # NL probabilities of the given labels: .75, .5, .1 → weights (1, .4/.65, 0); 1 of 3 below 0.3
    weights, ratio = nl_sample_weights(
        torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, math.log(9)]]), torch.tensor([0, 1, 0])
    )
    assert np.allclose(weights.numpy(), [1.0, 0.4 / 0.65, 0.0], atol=1e-6) and close(ratio, 1 / 3)
    with pytest.raises(VisionError, match="share a shape"):
        bldr_positive_loss(logits, torch.tensor([0]), torch.zeros(1, 3), torch.zeros(1, 2))


# -- RDD ----------------------------------------------------------------------------------------


def test_rdd_weights_and_hard_masks_by_hand():
    main, aux = torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]])
    # KL((¾, ¼) ‖ (½, ½)) = ¾ ln 1.5 + ¼ ln ½
    expected = math.exp(-(0.75 * math.log(1.5) + 0.25 * math.log(0.5)))
    assert close(LF.teacher_disagreement_weights(main, aux)[0], expected)
    assert close(LF.teacher_disagreement_weights(main, main)[0], 1.0)
    logits = torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]])  # true-class prob .75 (label 0) / .25 (label 1)
    assert LF.hard_example_mask(logits, torch.tensor([0, 1])).tolist() == [False, True]
    assert LF.hard_example_mask(logits, torch.tensor([0, 1]), min_kept=2).tolist() == [True, True]  # τ raised to .75


def test_rdd_stage_two_uses_only_xor_hard_examples():
    target = torch.tensor([0, 0])
    student = torch.tensor([[0.0, 0.0], [5.0, 0.0]])  # example 0 hard for the student (p = .5), 1 easy
    teacher = torch.tensor([[5.0, 0.0], [5.0, 0.0]])  # both easy for the teacher
    kd = LF.kd_loss(student, teacher, 1.0)
    assert close(LF.rdd_loss(student, teacher, teacher, target, stage=2), math.log(2) + float(kd))
    # Stage 1 with identical teacher heads: weights 1 → mean CE over both examples
    ce_mean = (math.log(2) + math.log(1 + math.exp(-5))) / 2
    assert close(LF.rdd_loss(student, teacher, teacher, target, stage=1), ce_mean + float(kd))
    with pytest.raises(VisionError, match="stage"):
        LF.rdd_loss(student, teacher, teacher, target, stage=3)
