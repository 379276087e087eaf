"""Federated simulator pieces and the FLAIN defence against hand-computed values."""

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.loops.federated import average_state_dicts, dirichlet_split, fedavg
from llmkit.vision.models import MLP
from llmkit.vision.posthoc import add_trigger, flain_defence, flain_flip


def test_dirichlet_split_is_a_partition():
    labels = np.repeat(np.arange(5), 40)
    parts = dirichlet_split(labels, 4, 0.1, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    with pytest.raises(VisionError, match="beta"):
        dirichlet_split(labels, 4, 0.0, np.random.default_rng(0))


def test_average_state_dicts_by_hand():
    avg = average_state_dicts([{"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 0.0])}], [1, 3])
    assert avg["w"].tolist() == [3.0, 1.0]


def test_fedavg_runs_and_learns_on_a_toy_problem():
    torch.manual_seed(0)
    x = torch.randn(80, 4)
    y = (x[:, 0] > 0).long()
    model, initial = fedavg(MLP(4, 2, (8,)), [(x[:40], y[:40]), (x[40:], y[40:])], rounds=20, local_epochs=2)
    assert not torch.equal(initial["heads.0.weight"], model.heads[0].weight)
    assert (model(x).logits.argmax(1) == y).float().mean() > 0.8


def test_flain_flip_and_stop_rule_by_hand():
    init, final = torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])
    # Flip neuron 1's update: (3, −4), already of norm 5 = ‖final‖
    assert flain_flip(init, final, torch.tensor([False, True])).tolist() == [[3.0, -4.0]]
    # Activations .0005 (neuron 0) and .0025 (neuron 1): thresholds .001 then .003.
    # The fake evaluator loses 10 points once neuron 1 is flipped → keep only neuron 0 flipped.
    evaluate = lambda w: 0.9 if w[0, 1] > 0 else 0.8
    weight, k, count = flain_defence(init, final, torch.tensor([0.0005, 0.0025]), evaluate)
    assert weight.tolist() == [[-3.0, 4.0]] and k == pytest.approx(0.001) and count == 1


def test_add_trigger_sets_the_corner_patch():
    x = torch.zeros(1, 64)
    patched = add_trigger(x).view(8, 8)
    assert patched[6:, 6:].tolist() == [[1.0, 1.0], [1.0, 1.0]] and patched.sum() == 4 and x.sum() == 0


# -- FairFAL --------------------------------------------------------------------------------------


def test_fairfal_model_choice_by_hand():
    from llmkit.vision.strategies.fairfal import distribution_discrepancy, imbalance_ratio, use_global_model

    # |.5 − .25| / .375 = 2/3, |.5 − .75| / .625 = .4 → ½ · mean = 0.26667
    assert distribution_discrepancy(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.8 / 3)
    assert imbalance_ratio(np.array([0.2, 0.8])) == pytest.approx(0.25)
    assert use_global_model(0.1, 0.3) and not use_global_model(0.3, 0.3)  # 1 − ½(d + ρ) = .8 vs .7


def test_fairfal_scores_by_hand():
    from llmkit.vision.strategies.fairfal import gradient_embeddings, normalised_entropy, prototype_pseudo_classes

    assert normalised_entropy(torch.tensor([[0.25] * 4, [1.0, 0, 0, 0]])).tolist() == pytest.approx([1.0, 0.0])
    # Class 1 has no labelled example, so every point falls to class 0's prototype.
    classes = prototype_pseudo_classes(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([0]), 2
    )
    assert classes.tolist() == [0, 0]
    # (p − onehot(ŷ)) ⊗ a = (−¼, ¼) ⊗ (1, 2)
    assert gradient_embeddings(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.75, 0.25]])).tolist() == [
        [-0.25, -0.5, 0.25, 0.5]
    ]


def test_fairfal_selection_helpers_by_hand():
    from llmkit.vision.strategies.fairfal import balanced_quotas, k_center_greedy

    # From anchor 0: farthest is 10, then 1 (distance 1 from {0, 10}) before 0.5
    assert k_center_greedy(np.array([[0.5], [1.0], [10.0]]), np.array([[0.0]]), 2).tolist() == [2, 1]
    # Budget 9 over classes with 5, 1, 0, 10 available: shares 3 → (3, 1, 0, 3), surplus 2 → (4, 1, 0, 4)
    assert balanced_quotas(np.array([5, 1, 0, 10]), 9).tolist() == [4, 1, 0, 4]
    assert balanced_quotas(np.array([1, 1]), 5).tolist() == [1, 1]  # capped by what exists


def test_fairfal_select_and_long_tail():
    from llmkit.vision.loops.federated_al import long_tail_indices
    from llmkit.vision.strategies import FairFALSampling
    from llmkit.vision.strategies.base import ModelScorer

    labels = np.repeat(np.arange(3), 100)
    kept = long_tail_indices(labels, 0.25, np.random.default_rng(0))
    assert np.bincount(labels[kept]).tolist() == [100, 50, 25]
    torch.manual_seed(0)
    x = torch.randn(30, 4)
    scorer = ModelScorer(x, {"global": MLP(4, 3, (8,)), "local": MLP(4, 3, (8,))})
    picked = FairFALSampling(3).select(
        np.arange(6, 30),
        6,
        scorer=scorer,
        labelled_idx=np.arange(6),
        labelled_y=np.array([0, 0, 1, 1, 2, 2]),
        state={"mean_global_imbalance": 0.4},
    )
    assert len(set(picked.tolist())) == 6 and set(picked.tolist()) <= set(range(6, 30))
    with pytest.raises(VisionError, match="labelled examples"):
        FairFALSampling(3).select(
            np.arange(6, 30), 6, scorer=scorer, labelled_idx=np.array([], dtype=int), labelled_y=np.array([], dtype=int)
        )
