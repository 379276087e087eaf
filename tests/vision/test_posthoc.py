"""Optimum shifting against hand-computed values."""

import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.posthoc import input_hessian_trace, min_norm_weights, optimum_shift_


def test_min_norm_weights_by_hand():
    # One input (1, 0): only the first weight is seen, so the min-norm weight zeroes the second.
    weight, bias = min_norm_weights(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert weight.tolist() == [[1.0, 0.0]] and bias is None
    # With a bias, (w, b) = (1, 1, 1) on the augmented input (1, 0, 1) → projection onto (1, 0, 1): (1, 0, 1).
    weight, bias = min_norm_weights(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([1.0]))
    assert torch.allclose(weight, torch.tensor([[1.0, 0.0]]), atol=1e-6) and torch.allclose(bias, torch.tensor([1.0]))


def test_optimum_shift_keeps_outputs_and_shrinks_the_norm():
    torch.manual_seed(0)
    layer, inputs = torch.nn.Linear(8, 3), torch.randn(5, 8)
    before_out, before_norm = layer(inputs).detach(), torch.cat([layer.weight.flatten(), layer.bias]).norm()
    optimum_shift_(layer, inputs)
    assert torch.allclose(layer(inputs), before_out, atol=1e-5)
    assert torch.cat([layer.weight.flatten(), layer.bias]).norm() <= before_norm
    with pytest.raises(VisionError, match="inputs"):
        min_norm_weights(torch.zeros(2, 3), torch.zeros(1, 4))


def test_input_hessian_trace_by_hand():
    # W rows (1, 0), (0, 2); p = (½, ½): Σ p_k‖w_k‖² = 2.5, ‖Wᵀp‖² = ‖(½, 1)‖² = 1.25 → 1.25
    trace = input_hessian_trace(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.5, 0.5]]))
    assert float(trace) == pytest.approx(1.25)
