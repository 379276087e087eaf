"""DCFS: hand-computed uncertainties, discrepancy loss, two-stage selection, resume."""

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.al import Oracle, StateIO, StoppingCriteria
from llmkit.vision.data import as_tensors, initial_labelled, load_digits_split, open_set_split
from llmkit.vision.loops.active import ActiveConfig, ActiveLoop
from llmkit.vision.losses.openset import head_discrepancy, head_discrepancy_loss
from llmkit.vision.strategies import make_strategy
from llmkit.vision.strategies.dcfs import data_uncertainty, dcfs_select_positions, distribution_uncertainty

ALPHA = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 1.0]], dtype=torch.float64)


def test_data_uncertainty_by_hand():
    # ψ(n+1) − ψ(m+1) are harmonic sums: (1,1) -> ψ(3)−ψ(2) = 1/2; (2,2) -> 1/3 + 1/4;
    # (3,1) -> 0.75·(1/4) + 0.25·(1/2 + 1/3 + 1/4)
    assert torch.allclose(
        data_uncertainty(ALPHA), torch.tensor([0.5, 0.583333, 0.458333], dtype=torch.float64), atol=1e-6
    )


def test_distribution_uncertainty_by_hand():
    # H(mean) − expected entropy: ln2 − 0.5, ln2 − 0.583333, 0.562335 − 0.458333
    assert torch.allclose(
        distribution_uncertainty(ALPHA), torch.tensor([0.193147, 0.109814, 0.104002], dtype=torch.float64), atol=1e-6
    )


def test_head_discrepancy_and_loss_by_hand():
    p1 = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    p2 = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    assert torch.allclose(head_discrepancy(p1, p2), torch.tensor([0.5, 2.0]))
    # known row 0 (0.5) is reduced, unknown row 1 (2.0) amplified: 0.5 − 2.0
    assert head_discrepancy_loss(p1, p2, torch.tensor([False, True])).item() == pytest.approx(-1.5)
    assert head_discrepancy_loss(p1, p2, torch.tensor([False, False])).item() == pytest.approx(1.25)


def test_two_stage_selection_by_hand():
    # coarse: ratio 2 × budget 1 keeps the two least uncertain (positions 0, 1); fine: higher discrepancy -> 1
    positions = dcfs_select_positions(
        np.array([0.0, 1, 2, 3]), np.array([0.0, 1, 2, 3]), np.array([0.1, 0.9, 5, 5]), 1, candidate_ratio=2
    )
    assert positions.tolist() == [1]


@pytest.mark.parametrize(
    "call",
    [
        lambda: data_uncertainty(torch.tensor([[1.0, -1.0]])),
        lambda: distribution_uncertainty(torch.tensor([1.0, 2.0])),
        lambda: head_discrepancy(torch.ones(2, 2), torch.ones(2, 3)),
        lambda: head_discrepancy_loss(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([True])),
        lambda: dcfs_select_positions(np.zeros(3), np.zeros(3), np.zeros(2), 1),
        lambda: dcfs_select_positions(np.zeros(3), np.zeros(3), np.zeros(3), 4),
        lambda: dcfs_select_positions(np.zeros(3), np.zeros(3), np.zeros(3), 1, candidate_ratio=0.5),
    ],
)
def test_bad_input_raises_vision_error(call):
    with pytest.raises(VisionError):
        call()


def test_strategy_returns_valid_pool_indices_within_budget():
    class Scorer:
        def predict(self, idx, role):
            from llmkit.vision.models import Outputs

            g = torch.Generator().manual_seed(0)
            heads = [torch.randn(len(idx), 3, generator=g), torch.randn(len(idx), 3, generator=g)]
            return Outputs(heads[0], heads, None)

    pool = np.arange(100, 130)
    chosen = make_strategy("dcfs", 3).select(pool, 5, scorer=Scorer())
    assert len(chosen) == 5 and len(set(chosen)) == 5 and set(chosen) <= set(pool)
    with pytest.raises(VisionError):
        make_strategy("dcfs", 3).select(pool, 31, scorer=Scorer())


def _loop(stateio, rounds=3):
    """Same small open-set setting as test_al's resume tests (known 0-2, budget 8, tiny models)."""
    split, known = load_digits_split(0), (0, 1, 2)
    view = open_set_split(split.y_test, known)
    x = as_tensors(split.x_train)
    x_test, y_test = as_tensors(split.x_test[view.is_known], view.known_labels[view.is_known])
    config = ActiveConfig(budget=8, target_steps=25, detector_steps=25, hidden=(32,))
    return ActiveLoop(
        x,
        Oracle(split.y_train, known_classes=known),
        make_strategy("dcfs", 3),
        StoppingCriteria("num_of_queries", rounds),
        stateio,
        x_test=x_test,
        y_test=y_test,
        num_known=3,
        seed=0,
        config=config,
    )


def _fresh_stateio(path):
    split = load_digits_split(0)
    n, n_test = len(split.y_train), int(np.isin(split.y_test, (0, 1, 2)).sum())
    init = initial_labelled(split.y_train, 2, np.random.default_rng(0), classes=(0, 1, 2))
    return StateIO(0, np.arange(n), np.arange(n_test), init, np.setdiff1d(np.arange(n), init), saving_path=path)


def test_resumed_dcfs_run_equals_uninterrupted_run(tmp_path):
    full = _loop(_fresh_stateio(tmp_path / "full.json")).run()
    _loop(_fresh_stateio(tmp_path / "part.json"), rounds=1).run()
    resumed = _loop(StateIO.load(tmp_path / "part.json")).run()
    assert resumed.num_of_query == full.num_of_query == 3
    assert resumed.to_dict()["states"] == full.to_dict()["states"]
