"""Multi-label losses (ASL, CAP pseudo-labels, L2D's MLD / CD / ID) against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.losses.multilabel import (
    L2DLoss,
    asymmetric_loss,
    cap_pseudo_labels,
    class_aware_distillation,
    fixed_threshold_pseudo_labels,
    instance_aware_distillation,
    mean_average_precision,
    multilabel_logit_distillation,
    structural_distances,
    structure_loss,
)
from llmkit.vision.models import LabelWiseMLP, Outputs


def test_asymmetric_loss_by_hand():
    # p = σ(0) = ½. Positive entry: −log ½. Negative entry: p_m = ½ − 0.05 = 0.45 → −0.45⁴·log(0.55).
    logits = torch.zeros(1, 2)
    expected = math.log(2) - 0.45**4 * math.log(0.55)
    assert math.isclose(float(asymmetric_loss(logits, torch.tensor([[1.0, 0.0]]))), expected, rel_tol=1e-6)
    masked = asymmetric_loss(logits, torch.tensor([[1.0, 0.0]]), weight=torch.tensor([[0.0, 1.0]]))
    assert math.isclose(float(masked), -(0.45**4) * math.log(0.55), rel_tol=1e-6)
    with pytest.raises(VisionError, match="differ in shape"):
        asymmetric_loss(logits, torch.zeros(2, 2))


def test_cap_pseudo_labels_match_the_prior_by_hand():
    probs = torch.tensor([[0.9], [0.2], [0.6], [0.1]])
    pseudo, mask = cap_pseudo_labels(probs, torch.tensor([0.5]))
    assert pseudo[:, 0].tolist() == [1, 0, 1, 0]  # the 2 (= ½·4) largest are positive
    assert mask[:, 0].tolist() == [1, 1, 1, 1]
    # ρ⁺ = ½ keeps only the single most confident positive; negatives: bottom round(.998·½·4) = 2
    _, mask = cap_pseudo_labels(probs, torch.tensor([0.5]), rho_pos=0.5)
    assert mask[:, 0].tolist() == [1, 1, 0, 1]
    # A fixed threshold ignores the prior.
    assert fixed_threshold_pseudo_labels(probs)[0][:, 0].tolist() == [1, 0, 1, 0]
    with pytest.raises(VisionError, match="class_prior"):
        cap_pseudo_labels(probs, torch.tensor([0.5, 0.5]))


def test_cap_positive_rate_equals_prior_per_class():
    torch.manual_seed(0)
    probs, prior = torch.rand(200, 3), torch.tensor([0.1, 0.25, 0.5])
    pseudo, _ = cap_pseudo_labels(probs, prior)
    assert pseudo.mean(0).tolist() == pytest.approx(prior.tolist(), abs=1 / 200)


def test_structural_distances_by_hand():
    # (0,0), (3,4), (0,4): distances 5, 4, 3 → mean positive distance 4
    psi = structural_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]))
    assert torch.allclose(psi, torch.tensor([[0, 5, 4], [5, 0, 3], [4, 3, 0]]) / 4, atol=1e-5)
    emb = torch.randn(5, 3)
    assert float(structure_loss(3 * emb, emb)) == pytest.approx(0.0, abs=1e-5)  # scale-invariant


def test_cd_and_id_are_zero_for_a_rescaled_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    teacher, targets = torch.randn(4, 3, 2), torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1.0]])
    assert float(class_aware_distillation(2 * teacher, teacher, targets)) == pytest.approx(0.0, abs=1e-5)
    assert float(instance_aware_distillation(2 * teacher, teacher, targets)) == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(4, 3, 2)
    assert (
        class_aware_distillation(other, teacher, targets) > 0
        and instance_aware_distillation(other, teacher, targets) > 0
    )
    # Groups with < 2 members contribute nothing.
    assert float(instance_aware_distillation(other, teacher, torch.zeros(4, 3))) == 0.0


def test_mld_and_l2d_loss():
    # MLD = BinaryKL at T = 1: σ(0) vs σ(ln 3) → ½ ln(4/3)
    assert math.isclose(
        float(multilabel_logit_distillation(torch.tensor([[math.log(3)]]), torch.zeros(1, 1))),
        0.5 * math.log(4 / 3),
        rel_tol=1e-6,
    )
    torch.manual_seed(0)
    model = LabelWiseMLP(6, 3, hidden=(8,), embed_dim=4)
    out = model(torch.randn(5, 6))
    assert out.features.shape == (5, 3, 4)
    targets = (torch.rand(5, 3) > 0.3).float()
    bce_only = L2DLoss(logits_weight=0, embedding_weight=0)(out, targets, out).item()
    assert L2DLoss()(out, targets, out).item() == pytest.approx(bce_only, abs=1e-4)  # teacher == student
    with pytest.raises(VisionError, match="label-wise embeddings"):
        flat = Outputs(out.logits, (out.logits,), out.logits)
        L2DLoss()(flat, targets, flat)


def test_mean_average_precision():
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    assert mean_average_precision(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), targets) == pytest.approx(100.0)
    with pytest.raises(VisionError, match="undefined"):
        mean_average_precision(np.zeros((2, 2)), np.zeros((2, 2)))


def test_cdcr_weights_and_candidates_by_hand():
    from llmkit.vision.losses.multilabel import add_false_candidates, cdcr_weights

    # candidates (1, 1, 0): the confident candidate (.7) is trusted, the unsure one (.5) ignored, the negative kept
    weights = cdcr_weights(torch.tensor([[0.7, 0.5, 0.9]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert weights.tolist() == [[1.0, 0.0, 1.0]]
    labels = np.array([[1, 0, 0], [0, 1, 0]])
    assert (add_false_candidates(labels, 0.0, np.random.default_rng(0)) == labels).all()
    assert (add_false_candidates(labels, 1.0, np.random.default_rng(0)) == 1).all()
    with pytest.raises(VisionError, match="differ in shape"):
        cdcr_weights(torch.zeros(1, 2), torch.zeros(1, 3))


def test_ccmn_corrected_loss_is_unbiased_by_hand():
    from llmkit.vision.losses.multilabel import ccmn_unbiased_bce, flip_multilabel

    f, rho_pos, rho_neg = torch.tensor([[0.7]]), 0.3, 0.1
    l1, l0 = math.log(1 + math.exp(-0.7)), math.log(1 + math.exp(0.7))  # −log σ(f), −log(1 − σ(f))
    c1 = float(ccmn_unbiased_bce(f, torch.ones(1, 1), rho_pos, rho_neg))
    c0 = float(ccmn_unbiased_bce(f, torch.zeros(1, 1), rho_pos, rho_neg))
    assert math.isclose(c1, ((1 - rho_neg) * l1 - rho_pos * l0) / 0.6, rel_tol=1e-6)
    # True 1 is observed as 1 w.p. 1−ρ⁺ and as 0 w.p. ρ⁺; the expectation is the clean loss. Same for true 0.
    assert math.isclose((1 - rho_pos) * c1 + rho_pos * c0, l1, rel_tol=1e-6)
    assert math.isclose(rho_neg * c1 + (1 - rho_neg) * c0, l0, rel_tol=1e-6)
    with pytest.raises(VisionError, match="< 1"):
        ccmn_unbiased_bce(f, torch.ones(1, 1), 0.6, 0.5)
    flipped = flip_multilabel(np.tile([1, 0], (20000, 1)), 0.3, 0.1, np.random.default_rng(0))
    assert abs((flipped[:, 0] == 0).mean() - 0.3) < 0.02 and abs(flipped[:, 1].mean() - 0.1) < 0.01
