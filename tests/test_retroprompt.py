"""RetroPrompt core (llmkit.prompting.retroprompt): hand-computed checks on tiny tensors.

Covers the issue's acceptance list: β = 0 recovers CE, leave-one-out demonstrations, the refresh
schedule, interpolation at λ = 0 and λ = 1, store search equal to brute force; plus the z-score softmax
weights, p_kNN and the loss against numbers worked out by hand, and clear errors for bad input.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmkit.prompting.retroprompt import (
    KnowledgeStore,
    RetroPromptRetrievalConfig,
    StoreRefreshSchedule,
    faiss_available,
    insert_demonstrations,
    interpolate_knn,
    knn_class_distribution,
    knn_distribution,
    knn_guided_loss,
    knn_negative_log_likelihood,
    label_position_features,
    label_position_forward,
    label_word_logits,
    label_word_token_ids,
    last_token_positions,
    match_norm,
    neural_demonstrations,
    training_knn_distribution,
    zscore_softmax_weights,
)

torch.set_num_threads(1)
LN2 = math.log(2.0)


def random_store(n=20, d=6, classes=3, seed=0, backend="torch"):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=gen)
    labels = torch.arange(n) % classes
    return KnowledgeStore(keys, labels, classes, backend=backend)


def brute_force_search(keys: np.ndarray, queries: np.ndarray, k: int, exclude=None):
    """The reference: every inner product in float64, one query at a time, sorted best first."""
    all_scores, all_ids = [], []
    for qi, query in enumerate(queries):
        scored = [(float(np.dot(query.astype(np.float64), key.astype(np.float64))), j) for j, key in enumerate(keys)]
        if exclude is not None:
            scored = [(s, j) for s, j in scored if j != exclude[qi]]
        scored.sort(key=lambda pair: -pair[0])
        all_scores.append([s for s, _ in scored[:k]])
        all_ids.append([j for _, j in scored[:k]])
    return np.array(all_scores), np.array(all_ids)


# ----- knowledge store -----------------------------------------------------------------------------------


def test_store_search_hand_example():
    # scores of query (2, 1): key0 → 2, key1 → 1, key2 → 3
    store = KnowledgeStore(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 0]), 2, "torch")
    scores, ids = store.search(torch.tensor([[2.0, 1.0]]), 2)
    assert ids.tolist() == [[2, 0]] and scores.tolist() == [[3.0, 2.0]]
    scores, ids = store.search(torch.tensor([[2.0, 1.0]]), 2, exclude_ids=torch.tensor([2]))
    assert ids.tolist() == [[0, 1]] and scores.tolist() == [[2.0, 1.0]]


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed (optional)")
        ),
    ],
)
def test_store_search_equals_brute_force(backend):
    store = random_store(backend=backend)
    queries = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    expected_scores, expected_ids = brute_force_search(store.keys.numpy(), queries.numpy(), 4)
    scores, ids = store.search(queries, 4)
    assert ids.tolist() == expected_ids.tolist()
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-5)

    exclude = [3, -1, 7, 0, 19]
    expected_scores, expected_ids = brute_force_search(store.keys.numpy(), queries.numpy(), 4, exclude)
    scores, ids = store.search(queries, 4, exclude_ids=torch.tensor(exclude))
    assert ids.tolist() == expected_ids.tolist()
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-5)

    # Same-class search returns global indices, all of that class, in brute-force order.
    members = store.class_members(1).numpy()
    _, local = brute_force_search(store.keys.numpy()[members], queries.numpy(), 3)
    _, ids = store.search_class(queries, 1, 3)
    assert ids.tolist() == members[local].tolist()


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed (optional)")
def test_faiss_and_torch_backends_agree():
    queries = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    a, b = random_store(backend="faiss"), random_store(backend="torch")
    exclude = torch.arange(7)
    for got, want in zip(a.search(queries, 5, exclude), b.search(queries, 5, exclude)):
        torch.testing.assert_close(got.float(), want.float())


def test_store_rejects_bad_input():
    keys = torch.randn(4, 3)
    with pytest.raises(ValueError, match="empty"):
        KnowledgeStore(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="out of range"):
        KnowledgeStore(keys, torch.tensor([0, 1, 2, 1]), 2)
    with pytest.raises(ValueError, match="out of range"):
        KnowledgeStore(keys, torch.tensor([0, -1, 1, 1]), 2)
    with pytest.raises(ValueError, match="4 keys but 3 labels"):
        KnowledgeStore(keys, torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="integer class ids"):
        KnowledgeStore(keys, torch.tensor([0.0, 1.0, 1.0, 0.0]), 2)
    store = KnowledgeStore(keys, torch.tensor([0, 1, 1, 1]), 2, "torch")
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        store.search(torch.randn(1, 3), 5)
    with pytest.raises(ValueError, match=r"query itself excluded: k must be in \[1, 3\]"):
        store.search(torch.randn(1, 3), 4, exclude_ids=torch.tensor([0]))
    with pytest.raises(ValueError, match="exclude id 4 is not a row"):
        store.search(torch.randn(1, 3), 1, exclude_ids=torch.tensor([4]))
    with pytest.raises(ValueError, match=r"queries must be \[Q, 3\]"):
        store.search(torch.randn(1, 5), 1)
    with pytest.raises(ValueError, match="class 0 has 1 examples"):
        store.search_class(torch.randn(1, 3), 0, 2)
    with pytest.raises(ValueError, match="class 2 is out of range"):
        store.search_class(torch.randn(1, 3), 2, 1)


# ----- neural demonstrations ---------------------------------------------------------------------------


def test_zscore_softmax_weights_hand_computed():
    # s = (1, 2, 3): mean 2, population std √(2/3), z = (−√1.5, 0, √1.5);
    # e^z = (0.293832, 1, 3.403280), sum 4.697112 → weights below.
    expected = torch.tensor([[0.0625558, 0.2128959, 0.7245483]])
    torch.testing.assert_close(zscore_softmax_weights(torch.tensor([[1.0, 2.0, 3.0]])), expected)
    # z-normalising removes the scale of the inner products
    torch.testing.assert_close(zscore_softmax_weights(torch.tensor([[10.0, 20.0, 30.0]])), expected)
    # no spread (or a single neighbour): uniform
    torch.testing.assert_close(zscore_softmax_weights(torch.tensor([[5.0, 5.0]])), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(zscore_softmax_weights(torch.tensor([[7.0]])), torch.tensor([[1.0]]))


def hand_store():
    # class 0: rows 0-2; class 1: rows 3-5
    keys = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 1.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    return KnowledgeStore(keys, torch.tensor([0, 0, 0, 1, 1, 1]), 2, "torch")


def test_neural_demonstrations_hand_computed_leave_one_out():
    store = hand_store()
    query = store.keys[2:3]  # example 2, (4, 1), queried as in training
    # Leave-one-out. Class 0: rows 1, 0 score 8, 4 → z = (1, −1) → weights (e/(e+1/e), ...) =
    # (0.880797, 0.119203) → 0.880797·(2, 0) + 0.119203·(1, 0) = (1.880797, 0).
    # Class 1: rows 5, 4 score 3, 2 → same weights → (0, 0.880797·3 + 0.119203·2) = (0, 2.880797).
    demos = neural_demonstrations(store, query, demo_topk=2, exclude_ids=torch.tensor([2]))
    torch.testing.assert_close(demos, torch.tensor([[[1.880797, 0.0], [0.0, 2.880797]]]))
    # Without leave-one-out the example retrieves itself (score 17) and its class vector changes.
    with_self = neural_demonstrations(store, query, demo_topk=2)
    _, ids = store.search_class(query, 0, 2)
    assert ids.tolist() == [[2, 1]]
    assert not torch.allclose(with_self[0, 0], demos[0, 0])
    torch.testing.assert_close(with_self[0, 1], demos[0, 1])  # the other class never held the query


def test_demonstrations_never_use_the_query_itself():
    store = random_store(n=24, d=4, classes=3, seed=3)
    own_ids = torch.arange(len(store))
    for label in range(3):
        _, ids = store.search_class(store.keys, label, 7, exclude_ids=own_ids)  # 8 per class, 7 others
        assert not (ids == own_ids[:, None]).any()
        assert (store.labels[ids] == label).all()
    demos = neural_demonstrations(store, store.keys, demo_topk=3, exclude_ids=own_ids)
    assert demos.shape == (24, 3, 4)
    with pytest.raises(ValueError, match="lower demo_topk"):
        neural_demonstrations(store, store.keys, demo_topk=8, exclude_ids=own_ids)


def test_match_norm():
    out = match_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]), 10.0)
    torch.testing.assert_close(out, torch.tensor([[6.0, 8.0], [0.0, 0.0], [0.0, -10.0]]))


def test_insert_demonstrations_replaces_only_the_slots():
    embeds = torch.randn(2, 5, 3, requires_grad=True)
    demos = torch.arange(12.0).reshape(2, 2, 3)
    slots = torch.tensor([[1, 2], [3, 0]])
    out = insert_demonstrations(embeds, slots, demos)
    assert torch.equal(out[0, 1], demos[0, 0]) and torch.equal(out[0, 2], demos[0, 1])
    assert torch.equal(out[1, 3], demos[1, 0]) and torch.equal(out[1, 0], demos[1, 1])
    untouched = torch.ones(2, 5, dtype=torch.bool)
    untouched[0, [1, 2]] = False
    untouched[1, [3, 0]] = False
    assert torch.equal(out[untouched], embeds[untouched])
    out.sum().backward()
    assert torch.equal(embeds.grad, untouched[..., None].float().expand(2, 5, 3))


# ----- kNN distribution, loss, interpolation -------------------------------------------------------------


def test_knn_class_distribution_hand_computed():
    # softmax(2, 1, 0) = (0.665241, 0.244728, 0.090031); labels (0, 1, 0) → (0.755272, 0.244728)
    p = knn_class_distribution(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0, 1, 0]]), 3)
    torch.testing.assert_close(p, torch.tensor([[0.755272, 0.244728, 0.0]]))
    # temperature 0.5 doubles the scores: softmax(4, 2, 0) = (0.866813, 0.117310, 0.015876)
    p = knn_class_distribution(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0, 1, 0]]), 2, temperature=0.5)
    torch.testing.assert_close(p, torch.tensor([[0.882689, 0.117310]]), atol=1e-5, rtol=0)
    store = random_store()
    p = knn_distribution(store, torch.randn(4, 6), k=16)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="neighbour label 3 is out of range"):
        knn_class_distribution(torch.zeros(1, 2), torch.tensor([[0, 3]]), 3)


BACKENDS = [
    "torch",
    pytest.param(
        "faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed (optional)")
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_knn_distribution_never_uses_the_query_itself(backend):
    # Issue 25: a training query is its own store key. Row 0 is the only example of class 2, so any
    # mass p_kNN puts on class 2 for query 0 could only come from its own entry.
    gen = torch.Generator().manual_seed(5)
    keys = torch.randn(13, 4, generator=gen)
    keys[0] *= 10.0  # its own score ‖k_0‖² then dwarfs every other: the self-retrieval case
    labels = torch.tensor([2] + [0, 1] * 6)
    store = KnowledgeStore(keys, labels, 3, backend=backend)
    rows = torch.arange(len(store))
    assert float(knn_distribution(store, store.keys[:1], 4)[0, 2]) > 0.99  # without leave-one-out: itself
    p = training_knn_distribution(store, rows, k=12)  # every other row is a neighbour
    assert float(p[0, 2]) == 0.0
    # Every query's p_kNN equals the one computed by brute force on the store without its own row.
    for i in rows.tolist():
        others = torch.tensor([j for j in rows.tolist() if j != i])
        scores = keys[others] @ keys[i]
        top = torch.topk(scores, 5).indices
        expected = knn_class_distribution(scores[top][None], labels[others][top][None], 3)
        torch.testing.assert_close(training_knn_distribution(store, torch.tensor([i]), k=5), expected)
    # The authors' setting, kept behind the flag, is the plain search.
    torch.testing.assert_close(
        training_knn_distribution(store, rows, k=4, leave_one_out=False), knn_distribution(store, store.keys, 4)
    )
    with pytest.raises(ValueError, match=r"k must be in \[1, 12\]"):
        training_knn_distribution(store, rows, k=13)
    with pytest.raises(ValueError, match="training row -1 is not a row"):
        training_knn_distribution(store, torch.tensor([3, -1]), k=2)


def loo_store():
    # class 0: rows 0, 1; class 1: rows 2, 3. Inner products ⟨k_i, k_j⟩:
    #        r0    r1    r2    r3
    #   r0   4     2     1     0
    #   r1   2     1.25  1.5   0.5
    #   r2   1     1.5   4.25  2
    #   r3   0     0.5   2     1
    keys = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.5, 2.0], [0.0, 1.0]])
    return KnowledgeStore(keys, torch.tensor([0, 0, 1, 1]), 2, "torch")


def test_training_knn_nll_hand_computed():
    # K = 2, T = 1, each row queried with its own key, its own row left out. p(gold) = σ(s_gold − s_other)
    # for a (gold, other) pair of neighbours, so NLL = ln(1 + e^{−(s_gold − s_other)}):
    #   row 0 (class 0): r1 2 (class 0), r2 1 (class 1) → NLL = ln(1 + e^{−1})   = 0.3132617
    #   row 1 (class 0): r0 2 (class 0), r2 1.5 (cl. 1) → NLL = ln(1 + e^{−0.5}) = 0.4740770
    #   row 2 (class 1): r3 2 (class 1), r1 1.5 (cl. 0) → NLL = ln(1 + e^{−0.5}) = 0.4740770
    #   row 3 (class 1): r2 2 (class 1), r1 0.5 (cl. 0) → NLL = ln(1 + e^{−1.5}) = 0.2014133
    # mean NLL_kNN = 1.4628290 / 4 = 0.3657072.
    # Without leave-one-out rows 0, 2, 3 retrieve themselves (scores 4, 4.25, 1 rank in their top 2) with a
    # same-class partner: p(gold) = 1, NLL = 0; row 1's own score 1.25 is outside its top 2, NLL unchanged.
    store, rows, targets = loo_store(), torch.arange(4), torch.tensor([0, 0, 1, 1])
    nll = knn_negative_log_likelihood(training_knn_distribution(store, rows, k=2), targets)
    torch.testing.assert_close(nll, torch.tensor([0.3132617, 0.4740770, 0.4740770, 0.2014133]))
    torch.testing.assert_close(nll.mean(), torch.tensor(0.3657072))
    with_self = knn_negative_log_likelihood(training_knn_distribution(store, rows, k=2, leave_one_out=False), targets)
    torch.testing.assert_close(with_self, torch.tensor([0.0, 0.4740770, 0.0, 0.0]))
    # The loss factor now moves: zero logits (CE = ln 2), β = 1 → ln 2 · (1 + 0.3657072) = 0.9466361.
    p_knn = training_knn_distribution(store, rows, k=2)
    torch.testing.assert_close(knn_guided_loss(torch.zeros(4, 2), p_knn, targets, 1.0), torch.tensor(0.9466361))


def test_inference_knn_keeps_every_store_entry():
    # A test query is not a store row: p_kNN at inference searches the whole store, nothing excluded.
    # q = (1, 1) scores r0 2, r1 1.5, r2 2.5, r3 1; K = 2 → r2 (class 1) 2.5, r0 (class 0) 2:
    # p = (σ(−0.5), σ(0.5)) = (0.3775407, 0.6224593).
    store = loo_store()
    p = knn_distribution(store, torch.tensor([[1.0, 1.0]]), k=2)
    torch.testing.assert_close(p, torch.tensor([[0.3775407, 0.6224593]]))
    assert knn_distribution(store, torch.tensor([[1.0, 1.0]]), k=4).shape == (1, 2)  # K may be the whole store


@pytest.mark.parametrize("form", ["batch_mean", "per_example"])
def test_beta_zero_recovers_cross_entropy(form):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1, 0, 2])
    p_knn = torch.softmax(torch.randn(6, 3, generator=gen), dim=1)
    loss = knn_guided_loss(logits, p_knn, targets, beta=0.0, form=form)
    (grad,) = torch.autograd.grad(loss, logits)
    reference = F.cross_entropy(logits, targets)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.equal(loss, reference)
    torch.testing.assert_close(grad, reference_grad)


def test_knn_guided_loss_hand_computed():
    # One example: CE = ln 2 (logits 0, 0), NLL = −ln 0.25 = ln 4; β = 0.5 → ln2 · (1 + ln 2) = 1.173600.
    one = knn_guided_loss(torch.zeros(1, 2), torch.tensor([[0.25, 0.75]]), torch.tensor([0]), beta=0.5)
    torch.testing.assert_close(one, torch.tensor(LN2 * (1 + 0.5 * 2 * LN2)))
    torch.testing.assert_close(one, torch.tensor(1.173600), atol=1e-6, rtol=0)
    # Two examples: A has CE ln 2, NLL ln 4; B (logits ln3, 0; target 1) has CE ln 4, NLL ln 2. β = 1:
    #   batch_mean  = 1.5 ln2 · (1 + 1.5 ln2) = 2.120740
    #   per_example = mean(ln2 (1 + 2 ln2), 2 ln2 (1 + ln2)) = 1.5 ln2 + 2 ln2² = 2.000627
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    p_knn = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    targets = torch.tensor([0, 1])
    torch.testing.assert_close(knn_guided_loss(logits, p_knn, targets, 1.0, "batch_mean"), torch.tensor(2.120740))
    torch.testing.assert_close(knn_guided_loss(logits, p_knn, targets, 1.0, "per_example"), torch.tensor(2.000627))
    # p_kNN(gold) = 0: log clamped at −100, so NLL = 100 and the loss stays finite.
    clamped = knn_guided_loss(torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), beta=0.01)
    torch.testing.assert_close(clamped, torch.tensor(LN2 * 2.0))


def test_batch_mean_factor_is_erased_by_gradient_clipping_but_per_example_is_not():
    # Why the SST-2 grid's kNN-training arm equals plain CE with `batch_mean` (issue 25): that form multiplies the
    # whole batch's CE by one detached scalar 1 + β·mean(NLL), so the gradient only changes length; once clipped
    # to max_grad_norm (most steps of that grid were: median norm 5-10 against 1.0) it is the CE gradient exactly.
    # `per_example` weights each example by its own NLL and so turns the gradient.
    torch.manual_seed(0)
    weight = torch.randn(64, 2) * 0.1  # logits of order 1: no example saturated
    features = torch.randn(3, 64) * 3  # a CE gradient norm well above 1
    targets = torch.tensor([0, 1, 1])
    p_knn = torch.tensor([[0.9, 0.1], [0.99, 0.01], [0.5, 0.5]])  # NLL_kNN = 0.105, 4.6, 0.69

    def clipped_gradient(beta, form):
        w = weight.clone().requires_grad_(True)
        knn_guided_loss(features @ w, p_knn, targets, beta, form).backward()
        torch.nn.utils.clip_grad_norm_([w], max_norm=1.0)
        return w.grad

    plain = clipped_gradient(0.0, "batch_mean")
    assert torch.linalg.vector_norm(plain) == pytest.approx(1.0, abs=1e-5)  # the case the grid was in
    torch.testing.assert_close(clipped_gradient(0.1, "batch_mean"), plain)
    torch.testing.assert_close(clipped_gradient(10.0, "batch_mean"), plain)
    turned = clipped_gradient(10.0, "per_example")
    assert (turned - plain).abs().max() > 0.01


def test_knn_guided_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="target 2 is out of range"):
        knn_guided_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), torch.tensor([2]), beta=0.1)
    with pytest.raises(ValueError, match="differ in shape"):
        knn_guided_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]), beta=0.1)
    with pytest.raises(ValueError, match="unknown kNN loss form"):
        knn_guided_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), torch.tensor([0]), 0.1, form="sum")


@pytest.mark.parametrize("mode", ["linear", "paper_logsumexp"])
def test_interpolation_endpoints(mode):
    p_lm = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p_knn = torch.tensor([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(interpolate_knn(p_lm, p_knn, 0.0, mode), p_lm)
    torch.testing.assert_close(interpolate_knn(p_lm, p_knn, 1.0, mode), p_knn)


def test_interpolation_hand_computed_and_paper_variant_differs():
    # linear, λ = 0.2: 0.2·(0, 1) + 0.8·(0.9, 0.1) = (0.72, 0.28)
    mixed = interpolate_knn(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.0, 1.0]]), 0.2)
    torch.testing.assert_close(mixed, torch.tensor([[0.72, 0.28]]))
    # λ = 0.5, p_LM = (0.24, 0.11, 0.65), p_kNN = (0, 0.75, 0.25): the linear mixture (0.12, 0.43, 0.45)
    # picks class 2; the authors' log(0.5 e^{p_LM} + 0.5 e^{p_kNN}) gives class 1 0.480 > class 2 0.470.
    p_lm, p_knn = torch.tensor([[0.24, 0.11, 0.65]]), torch.tensor([[0.0, 0.75, 0.25]])
    linear = interpolate_knn(p_lm, p_knn, 0.5, "linear")
    paper = interpolate_knn(p_lm, p_knn, 0.5, "paper_logsumexp")
    torch.testing.assert_close(linear, torch.tensor([[0.12, 0.43, 0.45]]))
    expected = [math.log(0.5 * math.exp(a) + 0.5 * math.exp(b)) for a, b in ((0.24, 0.0), (0.11, 0.75), (0.65, 0.25))]
    torch.testing.assert_close(paper, torch.tensor([expected]))
    assert int(linear.argmax()) == 2 and int(paper.argmax()) == 1
    with pytest.raises(ValueError, match=r"knn_lambda must be in \[0, 1\]"):
        interpolate_knn(p_lm, p_knn, 1.5)


# ----- refresh schedule ----------------------------------------------------------------------------------


def test_refresh_schedule_every_epoch_and_after_every_evaluation():
    # 4 steps per epoch, evaluation after steps 3, 6, 9 (trainer rule: global_step % eval_steps == 0)
    schedule = StoreRefreshSchedule(steps_per_epoch=4, eval_steps=3)
    assert schedule.rebuild_points(12) == [0, 3, 4, 6, 8, 9]
    assert [schedule.reason(s) for s in (0, 3, 4, 5, 12)] == ["start", "evaluation", "epoch", None, "epoch"]
    assert StoreRefreshSchedule(steps_per_epoch=4).rebuild_points(12) == [0, 4, 8]
    assert StoreRefreshSchedule(4, 3, after_eval=False).rebuild_points(12) == [0, 4, 8]
    assert StoreRefreshSchedule(4, 3, every_epoch=False).rebuild_points(12) == [0, 3, 6, 9]
    # a resumed run has no store yet: rebuild whatever the step
    assert not schedule.is_due(5) and schedule.is_due(5, have_store=False)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        StoreRefreshSchedule(steps_per_epoch=0)


def test_settings_defaults_and_validation():
    settings = RetroPromptRetrievalConfig()
    assert (settings.knn_k, settings.knn_beta, settings.knn_lambda, settings.demo_topk) == (16, 1e-4, 0.2, 8)
    assert settings.interpolation == "linear" and settings.loss_form == "batch_mean"
    assert settings.knn_exclude_self  # the kNN loss is leave-one-out by default (issue 25)
    with pytest.raises(ValueError, match="knn_lambda"):
        RetroPromptRetrievalConfig(knn_lambda=1.2)
    with pytest.raises(ValueError, match="knn_k"):
        RetroPromptRetrievalConfig(knn_k=0)
    with pytest.raises(ValueError, match="knn_beta"):
        RetroPromptRetrievalConfig(knn_beta=-1.0)


# ----- causal-LM features and label-word scores (tiny random Llama) --------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from llmkit.models import TinyModelConfig, build_tiny_model

    return build_tiny_model(TinyModelConfig(), vocab_size=96).eval()


def test_last_token_positions_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_positions(right).tolist() == [2, 3, 0]
    assert last_token_positions(left).tolist() == [3, 3]
    with pytest.raises(ValueError, match="no real token"):
        last_token_positions(torch.tensor([[0, 0]]))


def test_label_position_forward_matches_model_logits(tiny_llama):
    input_ids = torch.tensor([[5, 9, 14, 2, 0, 0], [7, 3, 8, 11, 19, 4]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    label_ids = torch.tensor([10, 20, 30])
    with torch.no_grad():
        out = label_position_forward(tiny_llama, batch, label_ids)
        logits = tiny_llama(input_ids=input_ids, attention_mask=attention_mask).logits
    assert out.features.shape == (2, 64) and out.label_logits.shape == (2, 3)
    expected = torch.stack([logits[0, 3, label_ids], logits[1, 5, label_ids]])
    torch.testing.assert_close(out.label_logits, expected, atol=1e-5, rtol=1e-5)
    # right padding does not change a row's feature (causal attention)
    with torch.no_grad():
        alone = label_position_features(
            tiny_llama, {"input_ids": input_ids[:1, :4], "attention_mask": attention_mask[:1, :4]}
        )
    torch.testing.assert_close(alone[0], out.features[0], atol=1e-5, rtol=1e-5)
    # explicit label positions win over the last real token
    with torch.no_grad():
        at_two = label_word_logits(tiny_llama, {**batch, "label_positions": torch.tensor([2, 2])}, label_ids)
    torch.testing.assert_close(at_two, logits[:, 2][:, label_ids], atol=1e-5, rtol=1e-5)


def test_label_logits_take_inserted_demonstrations(tiny_llama):
    input_ids = torch.tensor([[5, 1, 1, 14, 2]])  # slots at 1 and 2
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    label_ids = torch.tensor([10, 20])
    embeds = tiny_llama.get_input_embeddings()(input_ids)
    demos = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = label_word_logits(tiny_llama, batch, label_ids)
        same = label_word_logits(tiny_llama, batch, label_ids, inputs_embeds=embeds)
        with_demos = label_word_logits(
            tiny_llama, batch, label_ids, insert_demonstrations(embeds, torch.tensor([[1, 2]]), demos)
        )
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(with_demos, plain)


class WordTokenizer:
    """Stand-in tokenizer: one token per character, so only one-character words are one token."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_label_word_token_ids():
    assert label_word_token_ids(WordTokenizer(), ["a", "b"]).tolist() == [97, 98]
    with pytest.raises(ValueError, match="label word 'great' is 5 tokens"):
        label_word_token_ids(WordTokenizer(), ["great", "b"])
    with pytest.raises(ValueError, match="distinct"):
        label_word_token_ids(WordTokenizer(), ["a", "a"])


# ----- the recipe, in process (tiny random Llama, 4-shot SST-2) ------------------------------------------


def test_recipe_tiny_run_refreshes_on_schedule(tmp_path, monkeypatch, fresh_accelerate_state):
    import importlib.util
    import json

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "retroprompt_train", REPO_ROOT / "recipes" / "retroprompt" / "train.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, recipe)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(recipe)
    # Record the kNN calls: training ones must leave the query's own row out after every refresh (issue 25);
    # evaluation ones (test queries, not in the store) must exclude nothing and use the full K.
    training_calls, inference_calls = [], []

    def spy_training(store, rows, k, temperature=1.0, leave_one_out=True):
        training_calls.append((store, leave_one_out, k, len(store)))  # holds the store: ids stay distinct
        return training_knn_distribution(store, rows, k, temperature, leave_one_out)

    def spy_inference(store, queries, k, temperature=1.0, exclude_ids=None):
        inference_calls.append((exclude_ids, k))
        return knn_distribution(store, queries, k, temperature, exclude_ids)

    monkeypatch.setattr(recipe, "training_knn_distribution", spy_training)
    monkeypatch.setattr(recipe, "knn_distribution", spy_inference)
    # 4 shots per class → 8 examples, batch 4: 2 steps per epoch; evaluation after every step.
    recipe.main(
        [
            "--config",
            str(REPO_ROOT / "recipes" / "retroprompt" / "configs" / "tiny_cpu.yaml"),
            "--trainer.output_dir",
            str(tmp_path / "run"),
            "--trainer.max_steps",
            "3",
            "--trainer.eval_steps",
            "1",
            "--trainer.per_device_batch_size",
            "4",
            "--trainer.gradient_accumulation_steps",
            "1",
            "--method.shots_per_class",
            "4",
            "--method.eval_limit",
            "8",
            "--method.retroprompt.demo_topk",
            "2",
        ]
    )
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["train_examples"] == 8 and report["eval_examples"] == 8
    assert [(r["step"], r["reason"]) for r in report["refreshes"]] == [
        (0, "start"),
        (1, "evaluation"),
        (2, "epoch"),
        (3, "final"),
    ]
    # one training call per step, each on that step's fresh store, leave-one-out with K = min(16, 8 − 1)
    assert len(training_calls) == 3 and len({id(call[0]) for call in training_calls}) == 3
    assert all(loo and k == 7 and size == 8 for _, loo, k, size in training_calls)
    assert report["settings"]["knn_exclude_self"] is True
    assert inference_calls and all(exclude is None and k == 8 for exclude, k in inference_calls)
    for name in ("accuracy_lm", "accuracy_knn", "accuracy_interpolated"):
        assert 0.0 <= report["eval"][name] <= 1.0
    assert math.isfinite(report["eval"]["loss"])


# ----- the second task: ScienceQA subject classification (text_hash split, 3 classes) --------------------

SUBJECTS = ["natural science", "social science", "language science"]
SEEDS = (13, 21, 42, 87, 100)


@pytest.fixture(scope="module")
def recipe_module():
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "retroprompt_train", REPO_ROOT / "recipes" / "retroprompt" / "train.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, spec.name, recipe)  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(recipe)
        yield recipe


@pytest.fixture(scope="module")
def scienceqa_rows():
    from llmkit.data.loading import read_records

    return read_records("scienceqa/test.jsonl")


def test_scienceqa_subject_split_deterministic_k_per_class_and_disjoint(recipe_module, scienceqa_rows):
    split = recipe_module.split_by_text_hash
    pool_texts = {r["question"] for r in scienceqa_rows if recipe_module.text_in_pool(r["question"])}
    train, evaluation = split(scienceqa_rows, "question", "subject", 16, 13)
    # the fixed partition: 1 question text in 5 (SHA-256 mod 5) is pool, every other problem is evaluation
    assert len(evaluation) == 3317 and len(scienceqa_rows) - len(evaluation) == 924
    assert [r["subject"] for r in evaluation].count("social science") == 619
    eval_pids, eval_texts = {r["pid"] for r in evaluation}, {r["question"] for r in evaluation}
    assert not pool_texts & eval_texts
    draws = {}
    for seed in SEEDS:
        rows, again = (
            split(scienceqa_rows, "question", "subject", 16, seed)[0],
            split(scienceqa_rows, "question", "subject", 16, seed),
        )
        assert rows == again[0] and again[1] == evaluation  # deterministic; the evaluation part ignores the seed
        assert sorted(r["subject"] for r in rows) == sorted(SUBJECTS * 16)  # k per class exactly
        assert all(r["question"] in pool_texts for r in rows)  # from the pool part only
        assert len({(r["question"], r["subject"]) for r in rows}) == 48  # distinct texts within a class
        assert not {r["pid"] for r in rows} & eval_pids and not {r["question"] for r in rows} & eval_texts
        # a smaller k is a subset of the same seed's larger draw (as 4-shot SST-2 is of its 16-shot file)
        four = split(scienceqa_rows, "question", "subject", 4, seed)[0]
        assert {r["pid"] for r in four} <= {r["pid"] for r in rows} and len(four) == 12
        draws[seed] = frozenset(r["pid"] for r in rows)
    assert len(set(draws.values())) == len(SEEDS)  # the seeds draw different sets
    with pytest.raises(recipe_module.DataError, match="fewer than 100"):
        split(scienceqa_rows, "question", "subject", 100, 13)


def test_split_by_text_hash_hand_example(recipe_module):
    texts = [f"q{i}" for i in range(40)]
    rows = [{"t": t, "y": i % 2} for i, t in enumerate(texts)] + [{"t": "q0", "y": 0}]  # a duplicate text
    train, evaluation = recipe_module.split_by_text_hash(rows, "t", "y", 2, seed=0, modulus=4)
    in_pool = [t for t in texts if recipe_module.text_in_pool(t, 4)]
    assert [r["t"] for r in evaluation] == [r["t"] for r in rows if r["t"] not in in_pool]
    assert [r["y"] for r in train].count(0) == 2 and [r["y"] for r in train].count(1) == 2
    assert all(r["t"] in in_pool for r in train)
    assert train == sorted(train, key=rows.index)  # file order


def test_scienceqa_subject_label_words_are_distinct_single_tokens(tokenizer):
    ids = label_word_token_ids(tokenizer, [" nature", " society", " language"])
    assert len(set(ids.tolist())) == 3


def test_text_hash_settings_validation(recipe_module):
    method = recipe_module.RetroPromptMethodConfig
    with pytest.raises(ValueError, match="label_values"):
        method(label_values=["a"], label_words=[" x", " y"])
    with pytest.raises(ValueError, match="text_hash"):
        method(split="text_hash", train_path="scienceqa/test.jsonl", eval_path="scienceqa/test.jsonl")
    with pytest.raises(ValueError, match="text_hash"):
        method(split="text_hash", shots_per_class=16, train_path="a.jsonl", eval_path="b.jsonl")


def test_recipe_tiny_run_scienceqa_subject(recipe_module, tmp_path, fresh_accelerate_state):
    import json

    from conftest import REPO_ROOT

    recipe_module.main(
        [
            "--config",
            str(REPO_ROOT / "recipes" / "retroprompt" / "configs" / "tiny_cpu_scienceqa_subject.yaml"),
            "--trainer.output_dir",
            str(tmp_path / "run"),
            "--trainer.max_steps",
            "2",
            "--trainer.eval_steps",
            "0",
            "--trainer.seed",
            "21",
            "--method.shots_per_class",
            "4",
            "--method.retroprompt.demo_topk",
            "2",
            "--method.eval_limit",
            "24",
        ]
    )
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["train_examples"] == 12 and report["eval_examples"] == 24
    assert report["split"] == "text_hash" and report["split_seed"] == 21 and len(report["train_rows"]) == 12
    for name in ("accuracy", "accuracy_lm", "accuracy_knn", "accuracy_interpolated"):
        assert 0.0 <= report["eval"][name] <= 1.0
        assert report["eval"][name] * 24 == pytest.approx(round(report["eval"][name] * 24))  # a count of 24 rows
    assert math.isfinite(report["eval"]["loss"])  # label-word CE over the three classes


# ----- the ablation grid driver (recipes/retroprompt/grid.py) --------------------------------------------


@pytest.fixture(scope="module")
def grid_module():
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("retroprompt_grid", REPO_ROOT / "recipes" / "retroprompt" / "grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_overrides_select_split_shots_and_arm(grid_module):
    args = grid_module.run_overrides("files", 4, 21, "knn_train", "sst2/k-shot/16-13/train.jsonl")
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--trainer.seed"] == "21" and pairs["--method.shots_per_class"] == "4"
    assert pairs["--method.retroprompt.demo_topk"] == "2"
    assert pairs["--method.train_path"] == "sst2/k-shot/16-21/train.jsonl"
    assert (
        pairs["--method.retroprompt.use_demonstrations"],
        pairs["--method.retroprompt.knn_train"],
        pairs["--method.retroprompt.knn_infer"],
    ) == ("false", "true", "false")
    # ScienceQA draws its k-shot rows from the config's pool with the seed: no train_path override
    assert "--method.train_path" not in grid_module.run_overrides("text_hash", 16, 13, "full")
    assert (
        dict(zip(*[iter(grid_module.run_overrides("text_hash", 16, 13, "full"))] * 2))["--method.retroprompt.demo_topk"]
        == "8"
    )


def test_grid_seeded_train_path_follows_the_config(grid_module):
    from llmkit.errors import ConfigError

    # the seed is replaced in the config's own k-shot file, whatever the task's folder
    assert grid_module.seeded_train_path("mr/k-shot/16-13/train.jsonl", 87) == "mr/k-shot/16-87/train.jsonl"
    assert grid_module.seeded_train_path("/data/sst-2/16-100/train.tsv", 42) == "/data/sst-2/16-42/train.tsv"
    with pytest.raises(ConfigError, match="not an LM-BFF k-shot file"):
        grid_module.seeded_train_path("sst2/train.jsonl", 13)


def test_grid_refuses_its_own_keys_in_any_spelling(grid_module):
    from llmkit.errors import ConfigError

    config_cls = grid_module.recipe_config_class()
    grid_module.check_overrides(config_cls, ["--trainer.max_steps", "40", "--method.eval_limit=300"])  # allowed
    for extra in (
        ["--trainer.seed", "5"],
        ["--seed", "5"],
        ["--trainer.seed=5"],
        ["--output-dir", "x"],
        ["--shots_per_class", "16"],
        ["--method.train_path", "a/16-1/b"],
        ["--method.split", "files"],
        ["--method.retroprompt.knn_train", "true"],
        ["--trainer.resume"],
    ):
        with pytest.raises(ConfigError, match="set by the grid"):
            grid_module.check_overrides(config_cls, extra)
    with pytest.raises(ConfigError, match="--config"):
        grid_module.check_overrides(config_cls, ["--config", "other.yaml"])
    with pytest.raises(ConfigError, match="unknown config key"):
        grid_module.check_overrides(config_cls, ["--max_stepz", "40"])


def test_grid_same_command_reads_paths_as_files(grid_module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = ["--config", "recipes/x.yaml", "--trainer.output_dir", "runs/r1", "--trainer.seed", "13"]
    b = ["--config", "./recipes/x.yaml", "--trainer.output_dir", str(tmp_path / "runs" / "r1"), "--trainer.seed", "13"]
    assert grid_module.same_command(a, b)
    assert not grid_module.same_command(a, [*b[:-1], "21"])
    assert not grid_module.same_command(a, ["--config", "recipes/y.yaml", *b[2:]])


def test_grid_summary_hand_computed(grid_module):
    def run(lm, interp):
        return {"accuracy_lm": lm, "accuracy_interpolated": interp}

    results = {
        (16, 13, "plain"): run(0.80, 0.84),
        (16, 21, "plain"): run(0.70, 0.76),
        (16, 13, "full"): run(0.90, 0.60),
        (4, 13, "plain"): run(0.50, 0.50),
    }
    table = grid_module.summarise(results, [16, 4], [13, 21])
    plain = table["plain prompt tuning"][16]
    assert plain["mean"] == pytest.approx(75.0) and plain["std"] == pytest.approx(5.0)  # (80, 70), ddof 0 as LM-BFF
    assert table["+ kNN inference"][16]["mean"] == pytest.approx(80.0)  # the plain runs' interpolated accuracy
    assert table["full RetroPrompt"][16] == {
        "mean": pytest.approx(60.0),
        "std": 0.0,
        "n": 1,
        "values": [pytest.approx(60.0)],
    }
    assert 16 not in table["+ neural demonstrations"]
    text = grid_module.markdown(table, [16, 4], [13, 21])
    assert "| plain prompt tuning | 75.0 ± 5.0 | 50.0 ± 0.0 (1/2) |" in text
    assert "| + neural demonstrations | – | – |" in text


def test_grid_runs_tabulates_and_resumes(grid_module, tmp_path, capsys):
    from conftest import REPO_ROOT

    config = str(REPO_ROOT / "recipes" / "retroprompt" / "configs" / "tiny_cpu.yaml")
    argv = [
        "--config",
        config,
        "--root",
        str(tmp_path),
        "--shots",
        "4",
        "--seeds",
        "13",
        "--arms",
        "plain",
        "full",
        "--",
        "--trainer.max_steps",
        "2",
        "--trainer.eval_steps",
        "0",
        "--trainer.per_device_batch_size",
        "4",
        "--trainer.gradient_accumulation_steps",
        "1",
        "--method.eval_limit",
        "8",
    ]
    assert grid_module.main(argv) == 0
    first = capsys.readouterr().out
    assert first.count("[") >= 2 and "4shot-seed13-full" in first
    report = json.loads((tmp_path / "4shot-seed13-full" / "results.json").read_text())
    assert report["train_examples"] == 8 and report["settings"]["use_demonstrations"] is True
    plain = json.loads((tmp_path / "4shot-seed13-plain" / "results.json").read_text())
    assert plain["settings"]["knn_train"] is False and plain["settings"]["demo_topk"] == 2
    table = (tmp_path / "grid.md").read_text()
    assert f"| full RetroPrompt | {100 * report['eval']['accuracy_interpolated']:.1f} ± 0.0 |" in table
    # a second call finds every results.json and trains nothing
    assert grid_module.main(argv) == 0
    assert "4shot-seed13" not in capsys.readouterr().out.split("| arm")[0]
    # the same root with another schedule is refused rather than mixed into the table
    with pytest.raises(SystemExit, match="made by another command"):
        grid_module.main([a if a != "2" else "3" for a in argv])
    with pytest.raises(SystemExit):  # a missing config is a one-line usage error, before any folder is made
        grid_module.main(["--config", str(tmp_path / "missing.yaml"), "--root", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()
    # overrides the grid sets per run are refused after `--`, in any spelling, before a run starts
    # and so is a misspelled key (every run's config is loaded first), not found run by run
    for clash in (
        ["--trainer.seed", "5"],
        ["--seed=5"],
        ["--output_dir", str(tmp_path / "elsewhere")],
        ["--trainer.max_stepz", "3"],
    ):
        with pytest.raises(SystemExit):
            grid_module.main([*argv[:2], "--root", str(tmp_path / "other"), *argv[4:], *clash])
        assert not (tmp_path / "other").exists() and not (tmp_path / "elsewhere").exists()


def test_grid_continues_a_run_interrupted_after_a_checkpoint(grid_module, tmp_path):
    from conftest import REPO_ROOT

    config = str(REPO_ROOT / "recipes" / "retroprompt" / "configs" / "tiny_cpu.yaml")
    argv = [
        "--config",
        config,
        "--root",
        str(tmp_path),
        "--shots",
        "4",
        "--seeds",
        "13",
        "--arms",
        "plain",
        "--",
        "--trainer.max_steps",
        "2",
        "--trainer.eval_steps",
        "0",
        "--trainer.save_steps",
        "1",
        "--trainer.per_device_batch_size",
        "4",
        "--trainer.gradient_accumulation_steps",
        "1",
        "--method.eval_limit",
        "8",
    ]
    assert grid_module.main(argv) == 0
    run = tmp_path / "4shot-seed13-plain"
    assert sorted(p.name for p in run.glob("checkpoint-*"))  # the run saved checkpoints
    # as if it had died after its checkpoints, before the end: the next call finishes it instead of failing
    (run / "results.json").unlink()
    assert grid_module.main(argv) == 0
    assert (run / "results.json").exists()
    assert "resum" in (run / "run.log").read_text().lower()
