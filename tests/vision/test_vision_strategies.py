"""Query strategies: scores against hand-computed values, selection rules on tiny pools, input errors."""

import math

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.models import Outputs
from llmkit.vision.strategies import (
    EAOASampling,
    LfOSASampling,
    QueryResult,
    RandomSampling,
    UncertaintySampling,
    make_strategy,
)
from llmkit.vision.strategies.eaoa import (
    aleatoric_uncertainty,
    data_epistemic_uncertainty,
    eaoa_select_positions,
    model_epistemic_uncertainty,
    update_candidate_multiplier,
)
from llmkit.vision.strategies.lfosa import lfosa_utilities
from llmkit.vision.strategies.uncertainty import entropy_utility, least_confidence_utility, margin_utility


class FakeScorer:
    """Returns fixed logits/features for global example indices, per role."""

    def __init__(self, **logits_by_role):
        self.logits = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in logits_by_role.items()}

    def predict(self, idx, role="target"):
        logits = self.logits[role][torch.as_tensor(np.asarray(idx))]
        return Outputs(logits, (logits,), logits)


# -- closed-set baselines -------------------------------------------------------------------------


def test_uncertainty_measures_by_hand():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.5, 0.3, 0.2]])
    assert np.allclose(
        entropy_utility(probs),
        [math.log(2), 0.0, -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))],
        atol=1e-6,
    )
    assert np.allclose(least_confidence_utility(probs), [0.5, 0.0, 0.5])
    assert np.allclose(margin_utility(probs), [0.0, -1.0, -0.2])


def test_entropy_sampling_returns_pool_indices_most_uncertain_first():
    # Global examples 0..3; pool = {1, 2, 3}. Example 3 is flat (most uncertain), 1 is confident.
    logits = [[0, 0], [9, 0], [1, 0], [0, 0]]
    result = UncertaintySampling("entropy").select(
        np.array([1, 2, 3]), 2, scorer=FakeScorer(target=logits), return_utilities=True
    )
    assert isinstance(result, QueryResult)
    assert result.indices.tolist() == [3, 2]
    assert result.utilities.shape == (3,)


def test_random_sampling_is_a_reproducible_subset():
    pool = np.arange(100, 150)
    a = RandomSampling().select(pool, 10, rng=np.random.default_rng(3))
    b = RandomSampling().select(pool, 10, rng=np.random.default_rng(3))
    assert a.tolist() == b.tolist() and len(set(a)) == 10 and set(a) <= set(pool)
    with pytest.raises(VisionError, match="rng"):
        RandomSampling().select(pool, 10)


@pytest.mark.parametrize(
    "pool,budget,message",
    [
        ([], 1, "empty"),
        ([1, 2], 3, "exceeds"),
        ([1, 2], 0, "positive"),
        ([1, 1], 1, "duplicate"),
        ([1, 2], 1.5, "positive integer"),
    ],
)
def test_bad_queries_raise_clear_errors(pool, budget, message):
    with pytest.raises(VisionError, match=message):
        RandomSampling().select(np.array(pool), budget, rng=np.random.default_rng(0))


def test_make_strategy_rejects_unknown_names():
    with pytest.raises(VisionError, match="unknown strategy"):
        make_strategy("coreset", 3)
    with pytest.raises(VisionError, match="uncertainty measure"):
        UncertaintySampling("bald")


# -- LfOSA ----------------------------------------------------------------------------------------


def test_lfosa_utilities_split_each_predicted_class_by_max_activation():
    # C = 2 (+ unknown column 2). Rows 0-3 predicted class 0 with activations 10, 10.2, 1, 1.1;
    # row 4 predicted unknown; row 5 alone in class 1 (cannot be split → 0.5).
    logits = torch.tensor([[10.0, 0, 0], [10.2, 0, 0], [1.0, 0, 0], [1.1, 0, 0], [0, 0, 5.0], [0, 3.0, 0]])
    u = lfosa_utilities(logits, 2)
    assert u[0] > 0.99 and u[1] > 0.99 and u[2] < 0.01 and u[3] < 0.01
    assert u[4] == 0.0 and u[5] == 0.5
    picked = LfOSASampling(2).select(np.arange(6), 2, scorer=FakeScorer(detector=logits))
    assert set(picked.tolist()) == {0, 1}
    with pytest.raises(VisionError, match="C\\+1"):
        lfosa_utilities(torch.zeros(3, 2), 2)


# -- EAOA -----------------------------------------------------------------------------------------


def test_model_epistemic_uncertainty_by_hand():
    # C = 2: −logsumexp(0, 0) + softplus(0) = −ln 2 + ln 2 = 0; −logsumexp(ln 3, ln 1) + softplus(ln 3) = −ln 4 + ln 4
    eu = model_epistemic_uncertainty(torch.tensor([[0.0, 0.0, 0.0], [math.log(3), 0.0, math.log(3)]]), 2)
    assert np.allclose(eu, [0.0, 0.0], atol=1e-6)
    eu = model_epistemic_uncertainty(torch.tensor([[0.0, 0.0, 2.0]]), 2)
    assert math.isclose(float(eu[0]), -math.log(2) + math.log(1 + math.e**2), rel_tol=1e-6)


def test_aleatoric_uncertainty_is_log_of_non_top_mass():
    # logits (0, ln 3) → p = (¼, ¾): AU = log ¼
    assert math.isclose(
        float(aleatoric_uncertainty(torch.tensor([[0.0, math.log(3)]]))[0]), math.log(0.25), rel_tol=1e-6
    )


def test_data_epistemic_uncertainty_by_hand():
    # C = 1 known class; class 1 = labelled unknowns. k = 1: the known example's nearest pool point is p0,
    # the unknown's is p1. counts: p0 (1, 0), p1 (0, 1), p2 (0, 0) → EU = −count_0 + softplus(count_1).
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labelled = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    eu = data_epistemic_uncertainty(pool, labelled, torch.tensor([0, 1]), 1, k=1)
    assert np.allclose(eu, [-1 + math.log(2), math.log(1 + math.e), math.log(2)], atol=1e-6)


def test_eaoa_selection_is_purity_then_informativeness():
    # Class 0 = positions 0,1,2 (p_known .9 .8 .1, AU .1 .5 .9); class 1 = positions 3,4 (p_known .2 .7, AU .9 .3).
    p_known = np.array([0.9, 0.8, 0.1, 0.2, 0.7])
    au = np.array([0.1, 0.5, 0.9, 0.9, 0.3])
    predicted = np.array([0, 0, 0, 1, 1])
    rng = np.random.default_rng(0)
    # k1 = 2, B = 2 → 1 per class: class 0 candidates {0, 1} → most uncertain 1; class 1 candidates {4, 3} → 3.
    assert set(eaoa_select_positions(p_known, au, predicted, 2, 2, 2, rng).tolist()) == {1, 3}
    # k1 = 1: only the purest per class → {0, 4}.
    assert set(eaoa_select_positions(p_known, au, predicted, 2, 2, 1, rng).tolist()) == {0, 4}
    # k1 = 3 lets the impure but ambiguous position 2 in.
    assert set(eaoa_select_positions(p_known, au, predicted, 2, 2, 3, rng).tolist()) == {2, 3}
    # An empty predicted class: the budget is filled by the highest p_known among the rest.
    assert set(eaoa_select_positions(p_known, au, np.zeros(5, int), 2, 2, 1, rng).tolist()) == {0, 1}


def test_eaoa_k1_moves_towards_the_precision_target():
    assert update_candidate_multiplier(5, 0.9) == 6  # precise enough: look wider for informative ones
    assert update_candidate_multiplier(5, 0.3) == 4  # too many unknowns: be purer
    assert update_candidate_multiplier(1, 0.0) == 1  # never below 1
    assert update_candidate_multiplier(5, 0.62) == 5  # within tolerance
    strategy = EAOASampling(2)
    assert strategy.update_state(strategy.initial_state(), 1.0) == {"k1": 6}


def test_eaoa_select_returns_known_looking_examples():
    # Pool of 8: rows 0-3 look known to the detector (large known logits), rows 4-7 unknown (large unknown logit).
    detector = [[8, 0, -4]] * 2 + [[0, 8, -4]] * 2 + [[0, 0, 6]] * 4
    target = [[2, 0], [1, 0.8], [0, 2], [0.8, 1]] + [[0.1, 0]] * 4
    scorer = FakeScorer(detector=detector, target=target)
    strategy = EAOASampling(2, initial_k1=1, use_data_uncertainty=False)
    picked = strategy.select(np.arange(8), 2, scorer=scorer, state={"k1": 1}, rng=np.random.default_rng(0))
    assert set(picked.tolist()) <= {0, 1, 2, 3}
    with pytest.raises(VisionError, match="rng"):
        strategy.select(np.arange(8), 2, scorer=scorer)


# -- BUAL -----------------------------------------------------------------------------------------


def test_bidirectional_scores_by_hand():
    from llmkit.vision.strategies.bual import bidirectional_scores

    u_neg, u_pos = np.array([0.0, 1.0, 2.0]), np.array([4.0, 2.0, 0.0])  # normalised: (0, .5, 1) and (1, .5, 0)
    assert np.allclose(bidirectional_scores(u_neg, u_pos, 0.5), [0.5, 0.75, 1.0])
    # With an aux classifier: a = norm(P(unknown)) = (0, 1, .5) → a·u_N + r(1−a)·u_P
    assert np.allclose(bidirectional_scores(u_neg, u_pos, 0.5, np.array([0.1, 0.3, 0.2])), [0.5, 0.5, 0.5])


def test_random_complementary_labels_never_equal_the_label():
    from llmkit.vision.loops.bual import random_complementary_labels

    labels = torch.arange(4).repeat(50)
    comp = random_complementary_labels(labels, 4, torch.Generator().manual_seed(0))
    assert (comp != labels).all() and set(comp.tolist()) == {0, 1, 2, 3}


def test_bual_select_drops_predicted_unknowns_and_takes_lowest_scores():
    from llmkit.vision.loops.bual import BUALScores

    class Scorer(FakeScorer):
        def get(self, role):
            return BUALScores(u_pos=np.array([0.9, 0.5, 0.1, 0.2]), u_neg=np.array([1.0, 0.2, 0.0, 0.1]), nl_steps=1)

    detector = [[5, 0, 0], [5, 0, 0], [0, 0, 5], [0, 5, 0]]  # example 2 is predicted unknown (class C = 2)
    strategy = make_strategy("bual", 2)
    # a ≈ (0, 0, 1, 0); r = 1 → score = u_P (normalised) for 0, 1, 3: (1, .5, .125) → 3, then 1; 2 is dropped.
    picked = strategy.select(
        np.arange(4), 2, scorer=Scorer(detector=detector), labelled_y=np.array([0, -1]), state={"r": 1.0}
    )
    assert 2 not in picked.tolist() and set(picked.tolist()) == {1, 3}
    # Round 1 (no unknown labelled yet): no aux classifier, lowest u_N first → 2 then 3.
    assert strategy.select(np.arange(4), 2, scorer=Scorer(), labelled_y=np.array([0]), state={"r": 0.0}).tolist() == [
        2,
        3,
    ]
    assert strategy.update_state({"r": 0.0}, 0.8) == {"r": 0.8}


# -- E2OAL ----------------------------------------------------------------------------------------


def test_e2oal_scores_by_hand():
    from llmkit.vision.strategies.e2oal import e2oal_informativeness, js_divergence, known_unknown_margin

    # JS((1, 0), (½, ½)): m = (¾, ¼); ½·ln(4/3) + ½·½·ln(4/3) = ¾ ln(4/3)
    js = js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
    assert math.isclose(float(js[0]), 0.75 * math.log(4 / 3), rel_tol=1e-6)
    # Confident and flat predictions are both uninformative; in between is not.
    u = e2oal_informativeness(torch.tensor([[50.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    assert float(u[0]) < 1e-6 and float(u[1]) < 1e-9 and float(u[2]) > 1e-3
    assert known_unknown_margin(torch.tensor([[3.0, 1.0, 2.0, 0.5]]), 2).tolist() == [1.0]


def test_e2oal_candidate_size_and_target_update_by_hand():
    from llmkit.vision.strategies.e2oal import candidate_size, e2oal_select_positions, update_target_precision

    p_known, u = np.array([0.9, 0.8, 0.1, 0.05]), np.array([0.1, 0.2, 0.9, 0.8])
    # L=1 → pick 0 (.9); L=2 → pick 1 (.8); L=3 → pick 2 (.1 ≤ .5)
    assert candidate_size(p_known, u, 1, 0.5) == 3
    assert candidate_size(p_known, u, 1, 0.01) == 4  # never reached: the whole pool
    assert update_target_precision(0.6, 0.9) == pytest.approx(0.3)
    assert update_target_precision(0.6, 0.0) == 1.0  # clipped
    # One class, L = 2, B = 1: candidates = the 2 largest margins {0, 1}; the more informative is 1.
    assert e2oal_select_positions(
        np.array([3.0, 2.0, 1.0]), np.array([0.1, 0.5, 0.9]), np.zeros(3, int), 1, 1, 2
    ).tolist() == [1]


def test_f1_product_and_cluster_estimate():
    from llmkit.vision.strategies.e2oal import estimate_unknown_clusters, f1_product

    labels = np.array([0, 0, 1, 1, -1, -1])
    assert f1_product(np.array([0, 0, 1, 1, 2, 2]), labels, 2, 3) == pytest.approx(1.0)
    # Known F1 = (1 + 0.8)/2, unknown F1 = 2/3 → √0.6
    assert f1_product(np.array([0, 0, 1, 1, 1, 2]), labels, 2, 3) == pytest.approx(math.sqrt(0.6))
    # Four tight blobs: two known classes, two unknown groups → K = 4, unknowns get two distinct sub-classes.
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    features = np.concatenate([c + 0.1 * rng.standard_normal((5, 2)) for c in centres])
    y = np.repeat([0, 1, -1, -1], 5)
    k, sub = estimate_unknown_clusters(features, y, 2, max_clusters=8)
    assert k == 4 and (sub[:10] == -1).all() and len(set(sub[10:15])) == 1 and set(sub[10:]) == {0, 1}
    # Fewer labelled rows than C+1 (one per known class, 4 classes): K = n and no unknown sub-class.
    k, sub = estimate_unknown_clusters(np.eye(4), np.arange(4), 4)
    assert k == 4 and (sub == -1).all()


# -- Lewis-weight one-shot AL ----------------------------------------------------------------------


def test_lewis_weights_by_hand():
    from llmkit.vision.strategies.lewis import (
        leverage_scores,
        lewis_weights,
        multi_model_sampling_probabilities,
        weighted_least_squares_head,
    )

    assert np.allclose(leverage_scores(np.eye(3)), [1, 1, 1])
    assert np.allclose(leverage_scores(np.array([[1.0], [1.0]])), [0.5, 0.5])
    # One row sticking out in its own direction gets leverage 1; the two identical rows share the other.
    assert np.allclose(leverage_scores(np.array([[1.0, 0], [1.0, 0], [0, 3.0]])), [0.5, 0.5, 1.0])
    a = np.random.default_rng(0).standard_normal((30, 4))
    assert math.isclose(lewis_weights(a, p=1.0, iterations=60).sum(), 4.0, rel_tol=1e-3)  # Σ w = d for any p
    # max over models, scaled to the budget and capped at 1: scores (.5, .5, 1) → B=2: (.5, .5, 1)
    q = multi_model_sampling_probabilities([np.array([[1.0, 0], [1.0, 0], [0, 3.0]])], 2)
    assert np.allclose(q, [0.5, 0.5, 1.0])
    # Least squares with one constant feature: the head predicts the label frequencies (½, ½).
    assert np.allclose(weighted_least_squares_head(np.ones((2, 1)), np.array([0, 1]), 2, ridge=0.0), [[0.5, 0.5]])
    with pytest.raises(VisionError, match="0 < p < 4"):
        lewis_weights(a, p=5.0)


def test_lewis_one_shot_returns_a_pool_subset():
    from llmkit.vision.strategies import LewisOneShot

    features = np.random.default_rng(1).standard_normal((40, 3))
    picked = LewisOneShot([features, features**2]).select(np.arange(10, 40), 5, rng=np.random.default_rng(0))
    assert len(set(picked.tolist())) == 5 and set(picked.tolist()) <= set(range(10, 40))
