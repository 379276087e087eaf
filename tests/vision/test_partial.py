"""Partial-label pieces (candidate sets, candidate weights, MoGD's meta-gradient) against hand or
finite-difference values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from llmkit.vision import VisionError
from llmkit.vision.losses.partial import (
    candidate_sets,
    meta_weight_gradient,
    normalise_over_candidates,
    self_training_weights,
    weighted_candidate_loss,
)
from llmkit.vision.models import MLP


def test_candidate_sets_always_contain_the_true_label():
    labels = np.array([0, 3, 9])
    sets = candidate_sets(labels, 10, 0.0, np.random.default_rng(0))
    assert sets.tolist() == np.eye(10, dtype=np.float32)[labels].tolist()
    assert (candidate_sets(labels, 10, 1.0, np.random.default_rng(0)) == 1).all()
    with pytest.raises(VisionError, match="candidate rate"):
        candidate_sets(labels, 10, 2.0, np.random.default_rng(0))


def test_candidate_weights_by_hand():
    candidates = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    w = normalise_over_candidates(torch.tensor([[3.0, 1.0, 5.0], [-1.0, 2.0, -2.0]]), candidates)
    assert w.tolist() == [[0.75, 0.25, 0.0], [0.5, 0.0, 0.5]]  # row 2: nothing positive left → uniform
    # softmax(0, ln 3, ln 6) = (0.1, 0.3, 0.6); over candidates {0, 1}: (0.25, 0.75)
    st = self_training_weights(torch.tensor([[0.0, math.log(3), math.log(6)]]), candidates[:1])
    assert torch.allclose(st, torch.tensor([[0.25, 0.75, 0.0]]))
    # Σ w·(−log p) with p = ½ for both classes: ln 2
    assert math.isclose(
        float(weighted_candidate_loss(torch.zeros(1, 2), torch.tensor([[0.3, 0.7]]))), math.log(2), rel_tol=1e-6
    )


def test_meta_weight_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = MLP(3, 2, hidden=())
    x, x_val, y_val = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    weights = torch.full((4, 2), 0.5)
    grad = meta_weight_gradient(model, x, weights, x_val, y_val, virtual_lr=0.5)

    def val_loss_after_step(w):
        params = dict(model.named_parameters())
        loss = weighted_candidate_loss(functional_call(model, params, (x,)).logits, w, reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()))
        stepped = {n: p - 0.5 * g for (n, p), g in zip(params.items(), grads)}
        return F.cross_entropy(functional_call(model, stepped, (x_val,)).logits, y_val).item()

    eps = 1e-2
    for i, j in [(0, 0), (2, 1)]:
        up, down = weights.clone(), weights.clone()
        up[i, j] += eps
        down[i, j] -= eps
        numeric = (val_loss_after_step(up) - val_loss_after_step(down)) / (2 * eps)
        assert math.isclose(float(grad[i, j]), numeric, rel_tol=2e-2, abs_tol=1e-4)
