"""Data selection: IFD, CDAS quotas, the centroid objective, baselines and coverage, against hand-computed numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from llmkit.data.selection import (
    cdas_quotas,
    cdas_select,
    centroid_loss,
    cluster_histogram_kl,
    distribution_select,
    ifd_from_nll,
    kcenter_select,
    mean_nearest_selected_similarity,
    random_select,
    score_ifd,
    sequence_mean_nll,
    top_ifd_select,
)
from llmkit.data.selection.ifd import build_ifd_inputs
from llmkit.data.selection.methods import nearest_unused, train_centroids
from llmkit.data.sft import IGNORE_INDEX


def test_sequence_mean_nll_by_hand():
    # vocab 2; logits [0, ln 3] give p(token 1) = 3/4, p(token 0) = 1/4
    logits = torch.tensor([[[0.0, math.log(3)]] * 3, [[0.0, math.log(3)]] * 3])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0], [5, IGNORE_INDEX, IGNORE_INDEX]])
    got = sequence_mean_nll(logits, labels)
    assert got[0].item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)
    assert math.isnan(got[1].item())  # no target token after the shift


def test_ifd_is_the_perplexity_ratio_and_failures_become_zero():
    cond = np.array([1.0, 2.0, np.nan, 0.5])
    uncond = np.array([2.0, 1.0, 1.0, np.inf])
    ifd, failures = ifd_from_nll(cond, uncond)
    assert ifd[0] == pytest.approx(math.exp(1.0) / math.exp(2.0))  # PPL(a|q) / PPL(a)
    assert ifd[1] == pytest.approx(math.e)
    # NaN is a failure (→ 0); 0.5 − inf gives exp(−inf) = 0, a finite value, not a failure
    assert ifd[2] == 0.0 and ifd[3] == 0.0 and failures == 1
    # inf − inf is NaN: a failure
    ifd2, failures2 = ifd_from_nll(np.array([np.inf]), np.array([np.inf]))
    assert failures2 == 1 and ifd2[0] == 0.0


def test_ifd_inputs_mask_the_prompt(tokenizer):
    inp = build_ifd_inputs(tokenizer, "Add 1 and 2.", "3", max_length=64)
    prompt_len = len(tokenizer("Question:\nAdd 1 and 2.\n\nAnswer:\n")["input_ids"])
    answer = tokenizer("3", add_special_tokens=False)["input_ids"]
    assert inp.conditioned_ids[prompt_len:] == answer
    assert inp.conditioned_labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert inp.conditioned_labels[prompt_len:] == answer
    assert inp.response_ids == tokenizer("3")["input_ids"]
    short = build_ifd_inputs(tokenizer, "Add 1 and 2.", "3", max_length=4)
    assert len(short.conditioned_ids) == 4 and set(short.conditioned_labels) == {IGNORE_INDEX}  # response cut off


def test_score_ifd_matches_direct_computation_and_resumes(tmp_path, tokenizer):
    from llmkit.models import ModelConfig, load_model
    from llmkit.train.losses import token_cross_entropy_sum

    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer)).eval()
    qs = ["Write a function that adds two numbers.", "Reverse a string in Python.", "Say hi."]
    rs = ["def add(a, b):\n    return a + b", "s[::-1]", "hi"]
    path = tmp_path / "scores.jsonl"
    ifd, failures = score_ifd(model, tokenizer, qs, rs, path, max_length=128, batch_size=2, show_progress=False)
    expected = []
    with torch.no_grad():
        for q, r in zip(qs, rs):
            inp = build_ifd_inputs(tokenizer, q, r, 128)
            s1, n1 = token_cross_entropy_sum(
                model(input_ids=torch.tensor([inp.conditioned_ids])).logits, torch.tensor([inp.conditioned_labels])
            )
            s2, n2 = token_cross_entropy_sum(
                model(input_ids=torch.tensor([inp.response_ids])).logits, torch.tensor([inp.response_ids])
            )
            expected.append(math.exp(float(s1 / n1)) / math.exp(float(s2 / n2)) if n2 > 0 else 0.0)
    assert ifd == pytest.approx(expected, rel=1e-4)
    assert failures == expected.count(0.0)
    # resume: a torn last line is rescored, the others are read back, not recomputed
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    calls = []
    original = model.forward
    model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    ifd2, _ = score_ifd(model, tokenizer, qs, rs, path, max_length=128, batch_size=2, show_progress=False)
    assert ifd2 == pytest.approx(ifd, rel=1e-6)
    assert len(calls) == 2  # one batch (conditioned + alone) for the one sample lost
    # a different pool that shares pairs reuses their scores (keyed by text, not position)
    calls.clear()
    ifd3, _ = score_ifd(model, tokenizer, qs[::-1], rs[::-1], path, max_length=128, batch_size=2, show_progress=False)
    assert ifd3 == pytest.approx(ifd[::-1], rel=1e-6) and calls == []


def test_cdas_quotas_by_hand():
    ifd = np.array([0.9, 0.5, 1.2, 0.7, 0.3, 0.95, 0.2, 0.8, 1.0, 0.6])
    clusters = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    # cluster 0: filtered (IFD < 1) = {0:0.9, 1:0.5, 3:0.7, 4:0.3} → int(0.5·4) = 2 → [0, 3]
    # cluster 1: filtered = {5:0.95, 6:0.2, 7:0.8, 9:0.6} (8 has IFD = 1.0, dropped) → 2 → [5, 7]
    assert cdas_select(ifd, clusters, ratio=0.5).tolist() == [0, 3, 5, 7]
    assert cdas_quotas(ifd, clusters, ratio=0.5) == {
        0: {"pool": 5, "filtered": 4, "kept": 2},
        1: {"pool": 5, "filtered": 4, "kept": 2},
    }
    # m applies to the filtered cluster, floor: int(0.4·4) = 1 per cluster
    assert cdas_select(ifd, clusters, ratio=0.4).tolist() == [0, 5]
    with pytest.raises(ValueError):
        cdas_select(ifd, clusters, ratio=0.0)


def test_top_ifd_random_and_budget_errors():
    ifd = np.array([0.9, 1.5, 0.2, 0.95, 0.0])
    assert top_ifd_select(ifd, 2).tolist() == [3, 0]  # 1.5 is ≥ 1 and dropped
    with pytest.raises(ValueError):
        top_ifd_select(ifd, 5)
    r = random_select(100, 10, seed=1)
    assert len(set(r.tolist())) == 10 and r.tolist() == random_select(100, 10, seed=1).tolist()
    with pytest.raises(ValueError):
        random_select(5, 6)


def test_kcenter_picks_the_farthest_points():
    # unit vectors at 0°, 10°, 90°, 180°: start is seeded; then the farthest in cosine distance
    angles = np.radians([0, 10, 90, 180])
    x = np.stack([np.cos(angles), np.sin(angles)], 1)
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(4) == 0)  # a seed that starts at 0°
    chosen = kcenter_select(x, 3, seed=seed).tolist()
    assert chosen == [0, 3, 2]  # 180° (distance 2), then 90° (distance 1 from both)


def test_centroid_loss_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    theta = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised to e1, e2
    tau, lam = 0.5, 2.0
    # assignments: f0 → e1 (1), f1 → e2 (1), f2 → e2 (0.8); centroid similarity matrix = identity
    terms = []
    for pos in (1.0, 1.0, 0.8):
        numer = math.exp(pos / tau)
        denom = numer + lam * (math.exp(1 / tau) + math.exp(0 / tau))
        terms.append(-math.log(numer / denom))
    assert float(centroid_loss(f, theta, tau, lam)) == pytest.approx(sum(terms) / 3, rel=1e-6)


def test_centroid_loss_gradient_skips_the_stop_gradient_side():
    f = torch.nn.functional.normalize(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    theta = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    centroid_loss(f, theta).backward()
    # reference: the same objective written out with an explicit detached copy
    th = theta.detach().clone().requires_grad_(True)
    hat, hat_sg = torch.nn.functional.normalize(th, dim=1), torch.nn.functional.normalize(th.detach(), dim=1)
    sims = f @ hat.T
    c = sims.argmax(1)
    pos = sims[torch.arange(20), c] / 0.07
    neg = (hat[c] @ hat_sg.T) / 0.07
    ref = -(pos - torch.log(torch.exp(pos) + torch.exp(neg).sum(1))).mean()
    ref.backward()
    torch.testing.assert_close(theta.grad, th.grad, atol=1e-5, rtol=1e-4)


def test_slices_give_the_full_batch_result():
    f = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    full, curve_full = train_centroids(f, 5, iterations=20, slice_size=50, seed=3)
    sliced, curve_sliced = train_centroids(f, 5, iterations=20, slice_size=7, seed=3)
    torch.testing.assert_close(sliced, full, atol=1e-5, rtol=0)
    assert curve_sliced == pytest.approx(curve_full, rel=1e-5)
    assert curve_full[-1] < curve_full[0]


def test_nearest_unused_gives_unique_samples():
    f = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    centroids = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two centroids want sample 0
    assert nearest_unused(f, centroids).tolist() == [0, 1, 2]


def test_distribution_select_covers_better_than_random():
    rng = np.random.default_rng(0)
    # 8 tight blobs of very different sizes on the sphere
    centers = rng.normal(size=(8, 16))
    sizes = [400, 200, 100, 60, 40, 20, 10, 10]
    x = np.concatenate([c + 0.15 * rng.normal(size=(n, 16)) for c, n in zip(centers, sizes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(8), sizes)
    chosen, curve = distribution_select(x, 40, iterations=100, seed=0)
    assert len(set(chosen.tolist())) == 40
    assert curve[-1] < curve[0]
    rand = np.mean([mean_nearest_selected_similarity(x, random_select(len(x), 40, s)) for s in range(5)])
    assert mean_nearest_selected_similarity(x, chosen) > rand
    assert cluster_histogram_kl(labels, chosen) < 0.5


def test_coverage_measures_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # selecting sample 2: similarities 0.6, 0.8, 1.0 → mean 0.8
    assert mean_nearest_selected_similarity(x, np.array([2])) == pytest.approx(0.8)
    clusters = np.array([0, 0, 1, 1])
    assert cluster_histogram_kl(clusters, np.array([0, 2])) == pytest.approx(0.0, abs=1e-9)
    # selecting only cluster 0: q = ((2 + a)/(2 + 2a), a/(2 + 2a)) with a = 1e-3
    a = 1e-3
    q0, q1 = (2 + a) / (2 + 2 * a), a / (2 + 2 * a)
    assert cluster_histogram_kl(clusters, np.array([0, 1])) == pytest.approx(
        0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / q1)
    )


def test_llmkit_select_end_to_end(tmp_path, capsys):
    """The CLI on 60 real CodeAlpaca rows with the bundled embedder; a tiny model scores IFD."""
    from llmkit.cli import main

    common = [
        "--max_rows",
        "60",
        "--num_clusters",
        "4",
        "--model.name",
        "tiny-random-llama",
        "--cache_dir",
        str(tmp_path / "cache"),
        "--ifd_max_length",
        "256",
    ]
    assert main(["select", "--method", "cdas", "--output_dir", str(tmp_path / "cdas"), *common]) == 0
    summary = json.loads((tmp_path / "cdas" / "selection.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "cdas" / "subset.jsonl").read_text().splitlines()]
    assert len(rows) == summary["selected"] == sum(c["kept"] for c in summary["clusters"].values())
    assert all(r["_ifd"] < 1.0 and "instruction" in r and "output" in r for r in rows)
    for name in ("report.md", "cluster_counts.png", "ifd_hist.png"):
        assert (tmp_path / "cdas" / name).stat().st_size > 0
    assert (
        main(
            [
                "select",
                "--method",
                "distribution",
                "--budget",
                "12",
                "--iterations",
                "30",
                "--output_dir",
                str(tmp_path / "dist"),
                *common,
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "dist" / "selection.json").read_text())
    assert summary["selected"] == 12 and summary["timings_s"]["embed_s"] < 1.0  # embeddings came from the cache
    assert (tmp_path / "dist" / "centroid_loss.png").exists()


def test_select_rejects_bad_input(tmp_path):
    from llmkit.cli import main

    bad = tmp_path / "pool.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(SystemExit) as err:
        main(["select", "--data_path", str(bad), "--output_dir", str(tmp_path / "o")])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["select", "--method", "greedy"])
