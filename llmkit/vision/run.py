"""`python -m llmkit.vision.run <experiment>`: each method's CPU check on digits, over several seeds.

Prints a table (mean ± std over seeds), writes a learning-curve / result PNG and a results.json
under --out (default outputs/vision/<experiment>), and replaces that experiment's block in
llmkit/vision/README.md with the table, date, machine and command (skip with --no-readme).

Experiments:
  dpc        CE vs DPC's evidential loss (± GMM clean-sample selection) vs BLDR-lite, on noisy labels
  openset-al random / entropy / LfOSA / EAOA / BUAL / E2OAL / DCFS on open-set digits (known 0-5, unknown 6-9): query precision
  dhkd       student CE / KD / BinaryKL / DHKD (± gradient alignment) / DHKD+KD
  l2d        multi-label student: BCE / BCE+MLD / L2D (synthetic multi-label data)
  cap        semi-supervised multi-label: supervised / fixed-0.5 / CAP pseudo-labels
  cdcr       partial multi-label: naive BCE on candidates vs CDCR curriculum weights
  ccmn       class-conditional multi-label noise: BCE vs unbiased corrected BCE
  mogd       partial-label digits: uniform / self-training / MoGD candidate weights
  lewis      one-shot multi-model AL: Lewis-weight vs uniform sampling (least-squares heads)
  flain      FedAvg with backdoor clients: attack success before/after the FLAIN defence
  fairfal    federated AL on long-tailed non-IID digits: random / entropy / FairFAL
  rdd        per-sample relative-difficulty distillation vs CE and KD students
  rdd-seg    per-pixel RDD vs CE and KD students on synthetic shapes (segmentation: mIoU, pixel accuracy)
  optimum-shift  min-norm last layer: loss unchanged, ‖W‖ and input-Hessian trace before/after
  all        every experiment above
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from llmkit.errors import exit_on_user_error
from llmkit.vision import VisionError

EXPERIMENTS = ("dpc", "openset-al", "dhkd", "l2d", "cap", "cdcr", "ccmn", "mogd", "lewis", "flain", "fairfal", "rdd", "rdd-seg", "optimum-shift")
README = Path(__file__).with_name("README.md")


def mean_std(values, digits: int = 1) -> str:
    """'m ± s' with `digits` decimals (sample std, ddof=1; '± 0' for one value)."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(ddof=1) if values.size > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def paired_delta(values, baseline) -> str:
    """Mean ± std over seeds of the per-seed difference values − baseline (same seeds, so seed noise cancels)."""
    return mean_std(np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: write files, never open windows
    import matplotlib.pyplot as plt

    return plt


def _band(ax, curves, label):
    curves = np.asarray(curves, dtype=np.float64)
    x = np.arange(1, curves.shape[1] + 1)
    mean, std = curves.mean(0), curves.std(0)
    ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2)


# -- experiments -------------------------------------------------------------------------------------

def run_dpc(seeds, out: Path, args) -> tuple[str, dict]:
    """CE vs DPC loss (and GMM selection) on digits with injected label noise."""
    from llmkit.vision.data import as_tensors, inject_noise, load_digits_split
    from llmkit.vision.loops.noisy import NOISY_METHODS, NoisyConfig, train_noisy

    config = NoisyConfig(epochs=args.epochs or NoisyConfig.epochs)
    results = {m: [] for m in NOISY_METHODS}
    for seed in seeds:
        split = load_digits_split(seed)
        noisy = inject_noise(split.y_train, args.noise, args.rate, split.num_classes, np.random.default_rng(seed))
        x, y, clean, x_test, y_test = as_tensors(split.x_train, noisy, split.y_train, split.x_test, split.y_test)
        for method in NOISY_METHODS:
            r = train_noisy(method, x, y, x_test, y_test, seed=seed, config=config, clean_y=clean)
            results[method].append({"accuracy": r.accuracy, "kept": r.kept, "kept_precision": r.kept_precision,
                                    "curve": r.curve})
            print(f"  seed {seed} {method:<11} acc {r.accuracy:.1f}", flush=True)
    actual = float(np.mean(noisy != split.y_train) * 100)
    rows = []
    for method, runs in results.items():
        kept = [r["kept_precision"] for r in runs if r["kept_precision"] is not None]
        acc = [r["accuracy"] for r in runs]
        rows.append([method, mean_std(acc), paired_delta(acc, [r["accuracy"] for r in results["ce"]]),
                     mean_std(kept) if kept else "–", mean_std([r["kept"] for r in runs]) if kept else "–"])
    table = markdown_table(["method", "test acc %", "Δ vs ce (paired)", "kept-set label precision %",
                            "kept examples"], rows)
    title = (f"Noisy labels: DPC and BLDR vs CE — digits, {args.rate:.0%} {args.noise} noise (realised flip rate {actual:.0f}% on the last "
             f"seed), MLP 64-256-256, Adam 1e-3, batch 64, {config.epochs} epochs ({config.warmup_epochs} warm-up "
             f"before selection)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in results.items():
        _band(ax, [r["curve"] for r in runs], method)
    ax.set_xlabel("epoch"), ax.set_ylabel("test accuracy %"), ax.set_title(f"digits, {args.rate:.0%} {args.noise} noise")
    ax.legend(), fig.tight_layout(), fig.savefig(out / "learning_curve.png", dpi=120), plt.close(fig)
    return f"{title}\n\n{table}", results


def run_openset_al(seeds, out: Path, args) -> tuple[str, dict]:
    """Open-set AL on digits: query precision and known-class accuracy per strategy."""
    from llmkit.vision.al import Oracle, StateIO, StoppingCriteria
    from llmkit.vision.data import as_tensors, initial_labelled, load_digits_split, open_set_split
    from llmkit.vision.loops.active import ActiveConfig, ActiveLoop
    from llmkit.vision.strategies import make_strategy

    known = tuple(range(args.known))
    strategies = ("random", "entropy", "lfosa", "eaoa", "bual", "e2oal", "dcfs")
    config = ActiveConfig(budget=args.budget)
    results = {s: [] for s in strategies}
    for seed in seeds:
        split = load_digits_split(seed)
        test_view = open_set_split(split.y_test, known)
        x = as_tensors(split.x_train)
        x_test, y_test = as_tensors(split.x_test[test_view.is_known], test_view.known_labels[test_view.is_known])
        init_l = initial_labelled(split.y_train, args.initial_per_class, np.random.default_rng(seed), classes=known)
        init_u = np.setdiff1d(np.arange(len(x)), init_l)
        for name in strategies:
            stateio = StateIO(seed, np.arange(len(x)), np.arange(len(x_test)), init_l, init_u,
                              saving_path=out / "states" / f"{name}_seed{seed}.json")
            loop = ActiveLoop(x, Oracle(split.y_train, known_classes=known), make_strategy(name, len(known)),
                              StoppingCriteria("num_of_queries", args.rounds), stateio, x_test=x_test, y_test=y_test,
                              num_known=len(known), seed=seed, config=config)
            loop.run()
            results[name].append({"initial": stateio.initial_point,
                                  "accuracy": [s["performance"] for s in stateio],
                                  "precision": [s["query_precision"] * 100 for s in stateio],
                                  "known_labelled": stateio[-1]["num_labelled"] - len(init_l),
                                  "k1": [s["strategy_state"].get("k1") for s in stateio]})
            print(f"  seed {seed} {name:<8} precision {np.mean(results[name][-1]['precision']):.1f} "
                  f"acc {results[name][-1]['accuracy'][-1]:.1f}", flush=True)
    final = {name: [r["accuracy"][-1] for r in runs] for name, runs in results.items()}
    rows = [[name, mean_std([np.mean(r["precision"]) for r in runs]),
             mean_std([r["known_labelled"] for r in runs]), mean_std(final[name]),
             paired_delta(final[name], final["random"])]
            for name, runs in results.items()]
    pool_unknown = 100 * (1 - np.isin(split.y_train, known).mean())
    table = markdown_table(["strategy", "mean query precision %", "known examples bought",
                            "final known-class test acc %", "Δ acc vs random (paired)"], rows)
    title = (f"Open-set AL — digits, known {known[0]}–{known[-1]}, unknown the rest ({pool_unknown:.0f}% of the "
             f"pool); {args.initial_per_class} labelled per known class at start; {args.rounds} rounds × "
             f"{args.budget} queries; MLP 64-128-128, {config.target_steps} full-batch Adam steps per model, fresh "
             f"models each round. Initial accuracy {mean_std([r['initial'] for r in results['random']])}.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in results.items():
        _band(axes[0], [r["accuracy"] for r in runs], name)
        _band(axes[1], [r["precision"] for r in runs], name)
    axes[0].set_xlabel("query round"), axes[0].set_ylabel("known-class test accuracy %")
    axes[1].set_xlabel("query round"), axes[1].set_ylabel("query precision %")
    axes[0].legend(), fig.tight_layout(), fig.savefig(out / "learning_curve.png", dpi=120), plt.close(fig)
    return f"{title}\n\n{table}", results


def run_dhkd(seeds, out: Path, args) -> tuple[str, dict]:
    """Student accuracy for CE, KD, BinaryKL, DHKD (± GA) and DHKD+KD, with 100 labels."""
    import torch

    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.distill import DistillConfig, student_accuracy, train_student, train_teacher

    arms = [("ce", False), ("kd", False), ("binary_kl", False), ("dhkd", False), ("dhkd", True), ("dhkd+kd", False)]
    config = DistillConfig()
    results = {"teacher": []} | {f"{m}{' + GA' if ga else ''}": [] for m, ga in arms}
    for seed in seeds:
        split = load_digits_split(seed)
        x, y, x_test, y_test = as_tensors(split.x_train, split.y_train, split.x_test, split.y_test)
        teacher = train_teacher(x, y, seed=seed, config=config)
        results["teacher"].append(student_accuracy(teacher, x_test, y_test))
        with torch.no_grad():
            teacher.eval()
            teacher_logits = teacher(x).logits
        labelled = torch.zeros(len(x), dtype=torch.bool)
        labelled[torch.as_tensor(np.random.default_rng(seed).choice(len(x), args.labels, replace=False))] = True
        for mode, ga in arms:
            student = train_student(mode, x, y, labelled, teacher_logits, gradient_alignment=ga, seed=seed,
                                    config=config)
            results[f"{mode}{' + GA' if ga else ''}"].append(student_accuracy(student, x_test, y_test))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(["model", "test acc %", "Δ vs ce (paired)"],
                           [[k, mean_std(v), paired_delta(v, results["ce"])] for k, v in results.items()])
    title = (f"DHKD vs KD — digits; teacher MLP-512 on all train labels; student MLP-32 with {args.labels} labels "
             f"for CE and all train inputs for distillation; {config.student_steps} full-batch Adam steps "
             f"(lr {config.lr}); KD T={config.kd_temperature}, BinaryKL(-Norm) T={config.binary_temperature}, α=1")
    _bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results


def run_l2d(seeds, out: Path, args) -> tuple[str, dict]:
    """Multi-label student mAP: BCE, BCE+MLD, L2D (reference and scaled weights)."""
    from llmkit.vision.data import as_tensors, make_multilabel
    from llmkit.vision.loops.multilabel import L2D_ARMS, L2DConfig, predict_scores, train_l2d
    from llmkit.vision.losses.multilabel import mean_average_precision

    config = L2DConfig()
    results = {"teacher": []} | {arm: [] for arm in L2D_ARMS}
    for seed in seeds:
        x, y = make_multilabel(3000, 64, 15, seed=seed)
        x_tr, y_tr, x_te, y_te = as_tensors(x[:2000], y[:2000], x[2000:], y[2000:])
        teacher = None
        for arm in L2D_ARMS:
            score, teacher = train_l2d(arm, x_tr, y_tr, x_te, y_te, seed=seed, config=config, teacher=teacher)
            results[arm].append(score)
        results["teacher"].append(mean_average_precision(predict_scores(teacher, x_te), y_te.numpy()))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(["model", "test mAP %", "Δ vs bce (paired)"],
                           [[k, mean_std(v), paired_delta(v, results["bce"])] for k, v in results.items()])
    title = ("L2D vs BCE / MLD — scikit-learn make_multilabel_classification (15 labels, 64 features, 2,000 train / "
             f"1,000 test); teacher LabelWiseMLP-256 ({config.teacher_epochs} epochs), student LabelWiseMLP-16 "
             f"({config.epochs} epochs), label-wise embeddings d={config.embed_dim}, Adam {config.lr}, batch "
             f"{config.batch_size}; 'l2d' = reference weights (λ_logits 10, λ_cd 100, λ_id 1000), 'l2d-scaled' = "
             "λ_cd 1, λ_id 10")
    _bar_plot(results, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", results


def run_cap(seeds, out: Path, args) -> tuple[str, dict]:
    """SSMLL: supervised warm-up only vs fixed-0.5 pseudo-labels vs CAP's prior-matched pseudo-labels."""
    from llmkit.vision.data import as_tensors, make_multilabel
    from llmkit.vision.loops.multilabel import PSEUDO_LABEL_RULES, CAPConfig, train_cap

    config = CAPConfig()
    results = {rule: [] for rule in PSEUDO_LABEL_RULES}
    for seed in seeds:
        x, y = make_multilabel(4000, 64, 15, seed=seed)
        x_lab, y_lab, x_unl, y_unl, x_te, y_te = as_tensors(x[:150], y[:150], x[150:3000], y[150:3000], x[3000:],
                                                           y[3000:])
        for rule in PSEUDO_LABEL_RULES:
            r = train_cap(rule, x_lab, y_lab, x_unl, y_unl, x_te, y_te, seed=seed, config=config)
            results[rule].append({"map": r.map, "precision": r.precision, "recall": r.recall})
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]['map']:.1f}" for k, v in results.items()), flush=True)
    rows = []
    for rule, runs in results.items():
        pr = [r for r in runs if r["precision"] is not None]
        maps = [r["map"] for r in runs]
        rows.append([rule, mean_std(maps), paired_delta(maps, [r["map"] for r in results["supervised"]]),
                     mean_std([r["precision"] for r in pr]) if pr else "–",
                     mean_std([r["recall"] for r in pr]) if pr else "–"])
    table = markdown_table(["pseudo-labels", "test mAP %", "Δ vs supervised (paired)", "pseudo-label precision %",
                            "pseudo-label recall %"], rows)
    title = ("CAP vs fixed threshold — make_multilabel_classification (15 labels), 150 labelled / 2,850 unlabelled / "
             f"1,000 test; MLP-128, ASL (γ⁻ 4, γ⁺ 0, clip 0.05); {config.warmup_steps} warm-up steps on labelled "
             f"data, then {config.rounds} rounds × {config.steps_per_round} full-batch steps with pseudo-labels "
             "re-estimated each round ('supervised' keeps training on labelled data only)")
    _bar_plot({k: [r["map"] for r in v] for k, v in results.items()}, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", results


def run_cdcr(seeds, out: Path, args) -> tuple[str, dict]:
    """Partial multi-label: naive BCE on candidates vs CDCR's curriculum weights."""
    from llmkit.vision.data import as_tensors, make_multilabel
    from llmkit.vision.loops.multilabel import train_cdcr
    from llmkit.vision.losses.multilabel import add_false_candidates, mean_average_precision

    results = {"clean labels (oracle)": [], "naive": [], "cdcr": []}
    extra = []
    for seed in seeds:
        x, y = make_multilabel(3000, 64, 15, seed=seed)
        candidates = add_false_candidates(y[:2000], args.false_rate, np.random.default_rng(seed))
        x_tr, c_tr, y_tr, x_te, y_te = as_tensors(x[:2000], candidates, y[:2000], x[2000:], y[2000:])
        results["clean labels (oracle)"].append(train_cdcr("naive", x_tr, y_tr, x_te, y_te, seed=seed)["map"])
        results["naive"].append(train_cdcr("naive", x_tr, c_tr, x_te, y_te, seed=seed)["map"])
        r = train_cdcr("cdcr", x_tr, c_tr, x_te, y_te, seed=seed, true_labels=y_tr)
        results["cdcr"].append(r["map"])
        extra.append(r)
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(["training labels", "test mAP %", "Δ vs naive (paired)"],
                           [[k, mean_std(v), paired_delta(v, results["naive"])] for k, v in results.items()])
    fp_share = 100 * (1 - y[:2000].sum() / candidates.sum())
    title = (f"CDCR — make_multilabel_classification (15 labels), 2,000 train / 1,000 test; candidates = true "
             f"positives + each negative with probability {args.false_rate} ({fp_share:.0f}% of candidates false on "
             "the last seed); MLP-128, BCE, 5 warm-up epochs treating candidates as positives, 30 epochs in all; "
             "CDCR trusts a candidate once p ≥ 0.6. At the end CDCR trusts candidates with precision "
             f"{mean_std([r['trusted_precision'] for r in extra])}% and recall "
             f"{mean_std([r['trusted_recall'] for r in extra])}% of the true positives")
    _bar_plot(results, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", {"map": results, "cdcr_trust": extra}


def run_ccmn(seeds, out: Path, args) -> tuple[str, dict]:
    """Class-conditional multi-label noise: BCE vs CCMN's unbiased corrected BCE (known flip rates)."""
    from llmkit.vision.data import as_tensors, make_multilabel
    from llmkit.vision.loops.multilabel import train_ccmn
    from llmkit.vision.losses.multilabel import flip_multilabel

    rho_pos, rho_neg = args.rho_pos, args.rho_neg
    results = {"clean labels (oracle)": [], "bce": [], "ccmn": []}
    for seed in seeds:
        x, y = make_multilabel(3000, 64, 15, seed=seed)
        noisy = flip_multilabel(y[:2000], rho_pos, rho_neg, np.random.default_rng(seed))
        x_tr, n_tr, y_tr, x_te, y_te = as_tensors(x[:2000], noisy, y[:2000], x[2000:], y[2000:])
        results["clean labels (oracle)"].append(train_ccmn("bce", x_tr, y_tr, x_te, y_te, rho_pos=0, rho_neg=0,
                                                           seed=seed))
        for arm in ("bce", "ccmn"):
            results[arm].append(train_ccmn(arm, x_tr, n_tr, x_te, y_te, rho_pos=rho_pos, rho_neg=rho_neg, seed=seed))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(["training", "clean-test mAP %", "Δ vs bce (paired)"],
                           [[k, mean_std(v), paired_delta(v, results["bce"])] for k, v in results.items()])
    title = (f"CCMN — make_multilabel_classification (15 labels), 2,000 train / 1,000 clean test; every label "
             f"flipped class-conditionally with ρ⁺ = P(1→0) = {rho_pos}, ρ⁻ = P(0→1) = {rho_neg} (rates known to "
             "CCMN); MLP-128, Adam 1e-3, batch 64, 20 epochs")
    _bar_plot(results, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", results


def run_mogd(seeds, out: Path, args) -> tuple[str, dict]:
    """Partial-label digits: uniform candidate weights vs self-training (PRODEN-style) vs MoGD meta-weights."""
    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.noisy import PLL_METHODS, train_partial_label
    from llmkit.vision.losses.partial import candidate_sets

    results = {m: [] for m in PLL_METHODS}
    for seed in seeds:
        split = load_digits_split(seed)
        rng = np.random.default_rng(seed)
        val = rng.choice(len(split.y_train), args.clean_val, replace=False)
        train = np.setdiff1d(np.arange(len(split.y_train)), val)
        cand = candidate_sets(split.y_train[train], 10, args.candidate_rate, rng)
        x, c, x_val, y_val, x_te, y_te = as_tensors(split.x_train[train], cand, split.x_train[val],
                                                    split.y_train[val], split.x_test, split.y_test)
        for method in PLL_METHODS:
            results[method].append(train_partial_label(method, x, c, x_val, y_val, x_te, y_te, seed=seed))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(["candidate weights", "test acc %", "Δ vs uniform (paired)"],
                           [[k, mean_std(v), paired_delta(v, results["uniform"])] for k, v in results.items()])
    title = (f"MoGD (partial labels) — digits; candidate set = true label + each other class with probability "
             f"{args.candidate_rate} (≈{1 + 9 * args.candidate_rate:.1f} candidates); {args.clean_val} clean validation "
             "examples for MoGD's meta-gradient (virtual SGD step 0.1, exponentiated-gradient weight step 1); "
             "MLP-128, Adam 1e-3, batch 64, 30 epochs")
    _bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results


def run_lewis(seeds, out: Path, args) -> tuple[str, dict]:
    """One-shot multi-model AL: Lewis-weight sampling vs uniform sampling, least-squares heads on 3 feature maps."""
    from sklearn.decomposition import PCA

    from llmkit.vision.data import load_digits_split
    from llmkit.vision.strategies.lewis import (multi_model_sampling_probabilities, sample_without_replacement,
                                                weighted_least_squares_head)

    names = ("pixels-64", "pca-16", "random-relu-48")
    results = {f"{sampler} / {name}": [] for sampler in ("uniform", "lewis") for name in names}
    for seed in seeds:
        split = load_digits_split(seed)
        rng = np.random.default_rng(seed)
        projection = rng.standard_normal((64, 48)) / 8
        pca = PCA(16, random_state=seed).fit(split.x_train)
        maps = [lambda z: z, pca.transform, lambda z: np.maximum(z @ projection, 0)]
        with_bias = lambda f: np.hstack([f, np.ones((len(f), 1))])
        train_maps = [with_bias(m(split.x_train)) for m in maps]
        test_maps = [with_bias(m(split.x_test)) for m in maps]
        q = multi_model_sampling_probabilities(train_maps, args.lewis_budget)
        chosen = {"uniform": (rng.choice(len(split.y_train), args.lewis_budget, replace=False),
                              np.ones(args.lewis_budget)),
                  "lewis": sample_without_replacement(q, args.lewis_budget, rng)}
        for sampler, (idx, weights) in chosen.items():
            for name, f_tr, f_te in zip(names, train_maps, test_maps):
                head = weighted_least_squares_head(f_tr[idx], split.y_train[idx], 10, weights)
                results[f"{sampler} / {name}"].append(float(((f_te @ head).argmax(1) == split.y_test).mean() * 100))
    rows = [[k, mean_std(v), paired_delta(v, results[k.replace("lewis", "uniform")]) if k.startswith("lewis") else "–"]
            for k, v in results.items()]
    table = markdown_table(["sampler / feature map", "test acc %", "Δ vs uniform (paired)"], rows)
    title = (f"Lewis-weight one-shot AL — digits; {args.lewis_budget} labels queried at once for 3 models (feature "
             "maps: raw pixels, PCA-16, random ReLU-48, each + bias); p = 2 (leverage scores), sampling ∝ max over "
             "models, importance weights 1/q, ridge-1e-3 least-squares one-hot heads; uniform = same budget drawn "
             "uniformly, unweighted")
    _bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results


def run_flain(seeds, out: Path, args) -> tuple[str, dict]:
    """FedAvg on digits with backdoor clients; attack success and clean accuracy before/after FLAIN."""
    import torch

    from llmkit.vision.data import as_tensors, initial_labelled, load_digits_split
    from llmkit.vision.loops.federated import dirichlet_split, fedavg
    from llmkit.vision.models import MLP
    from llmkit.vision.posthoc import add_trigger, flain_defence

    target_class, num_clients, malicious = 0, 10, 2
    keys = ("clean test acc %", "attack success %")
    results = {"no defence": {k: [] for k in keys}, "FLAIN": {k: [] for k in keys}, "flipped neurons": []}

    def measure(model, x_te, y_te, into):
        model.eval()
        with torch.no_grad():
            into["clean test acc %"].append(float((model(x_te).logits.argmax(1) == y_te).float().mean() * 100))
            victims = x_te[y_te != target_class]
            into["attack success %"].append(float((model(add_trigger(victims)).logits.argmax(1) == target_class)
                                                  .float().mean() * 100))

    for seed in seeds:
        rng = np.random.default_rng(seed)
        split = load_digits_split(seed)
        aux = initial_labelled(split.y_test, 5, rng)  # FLAIN's small clean auxiliary set: 5 per class
        rest = np.setdiff1d(np.arange(len(split.y_test)), aux)
        x, y = as_tensors(split.x_train, split.y_train)
        x_aux, y_aux, x_te, y_te = as_tensors(split.x_test[aux], split.y_test[aux], split.x_test[rest],
                                              split.y_test[rest])
        clients = []
        for c, idx in enumerate(dirichlet_split(split.y_train, num_clients, args.beta, rng)):
            cx, cy = x[torch.as_tensor(idx)].clone(), y[torch.as_tensor(idx)].clone()
            if c < malicious:  # poison half of the malicious clients' data: trigger + target label
                poison = torch.as_tensor(rng.random(len(cy)) < 0.5)
                cx[poison], cy[poison] = add_trigger(cx[poison]), target_class
            clients.append((cx, cy))
        torch.manual_seed(seed)
        model, initial = fedavg(MLP(64, 10, (128,)), clients, rounds=args.fl_rounds, seed=seed)
        measure(model, x_te, y_te, results["no defence"])
        head = model.heads[0]
        with torch.no_grad():
            activation = model(x_aux).features.mean(0)

        def aux_accuracy(weight):
            original = head.weight.detach().clone()
            with torch.no_grad():
                head.weight.copy_(weight)
                acc = float((model(x_aux).logits.argmax(1) == y_aux).float().mean())
                head.weight.copy_(original)
            return acc

        defended, _, flipped = flain_defence(initial["heads.0.weight"], head.weight.detach().clone(), activation,
                                             aux_accuracy, tolerance=args.flain_tolerance)
        with torch.no_grad():
            head.weight.copy_(defended)
        measure(model, x_te, y_te, results["FLAIN"])
        results["flipped neurons"].append(flipped)
        print(f"  seed {seed}: ASR {results['no defence']['attack success %'][-1]:.1f} → "
              f"{results['FLAIN']['attack success %'][-1]:.1f}, flipped {flipped}", flush=True)
    rows = [[k, mean_std(results["no defence"][k]), mean_std(results["FLAIN"][k]),
             paired_delta(results["FLAIN"][k], results["no defence"][k])] for k in keys]
    table = markdown_table(["metric", "no defence", "FLAIN", "Δ (paired)"], rows)
    title = (f"FLAIN — digits, FedAvg over {num_clients} clients (Dirichlet β={args.beta}), {args.fl_rounds} rounds × 2 "
             f"local epochs (SGD 0.05, momentum 0.9), MLP 64-128-10; {malicious} malicious clients relabel half their "
             f"data as class {target_class} with a 2×2 corner trigger; FLAIN on the last layer with 5 clean "
             f"examples per class, tolerance {args.flain_tolerance}; "
             f"{mean_std(results['flipped neurons'])} of 128 input neurons flipped")
    _bar_plot({f"{k} / {w}": results[w][k] for k in keys for w in ("no defence", "FLAIN")}, out / "result.png", "%")
    return f"{title}\n\n{table}", results


def run_fairfal(seeds, out: Path, args) -> tuple[str, dict]:
    """Federated AL on long-tailed, non-IID digits: random vs entropy vs FairFAL (balanced accuracy per cycle)."""
    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.federated_al import (FEDERATED_STRATEGIES, FederatedALConfig, federated_active_learning,
                                                  long_tail_indices)

    config = FederatedALConfig(beta=args.fl_beta)
    results = {s: [] for s in FEDERATED_STRATEGIES}
    for seed in seeds:
        split = load_digits_split(seed)
        keep = long_tail_indices(split.y_train, args.imbalance, np.random.default_rng(seed))
        x, x_te, y_te = as_tensors(split.x_train[keep], split.x_test, split.y_test)
        for strategy in FEDERATED_STRATEGIES:
            curve, fractions = federated_active_learning(strategy, x, split.y_train[keep], x_te, y_te, seed=seed,
                                                         config=config)
            results[strategy].append(curve)
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1][-1]:.1f}" for k, v in results.items()), flush=True)
    final = {k: [c[-1] for c in v] for k, v in results.items()}
    area = {k: [float(np.mean(c[1:])) for c in v] for k, v in results.items()}
    rows = [[k, mean_std(final[k]), paired_delta(final[k], final["random"]), mean_std(area[k]),
             paired_delta(area[k], area["random"])] for k in results]
    table = markdown_table(["strategy", f"balanced test acc % at {fractions[-1]:.0%} labelled", "Δ vs random (paired)",
                            "mean over query cycles", "Δ vs random (paired)"], rows)
    title = (f"FairFAL — digits made long-tailed (imbalance {args.imbalance}: {len(keep)} train examples on the last "
             f"seed), {config.num_clients} clients by Dirichlet β={config.beta}; {config.initial_fraction:.0%} labelled "
             f"at start, +{config.query_fraction:.0%} of each client's data per cycle, {config.cycles} cycles; each cycle "
             f"a fresh FedAvg ({config.fl_rounds} rounds × {config.local_epochs} local epochs, SGD {config.lr}, batch "
             f"{config.batch_size}), MLP 64-128; balanced accuracy on the (balanced) digits test split")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curves in results.items():
        curves = np.asarray(curves)
        ax.plot(fractions, curves.mean(0), label=name)
        ax.fill_between(fractions, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
    ax.set_xlabel("labelled fraction"), ax.set_ylabel("balanced test accuracy %"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "learning_curve.png", dpi=120), plt.close(fig)
    return f"{title}\n\n{table}", results


def run_rdd(seeds, out: Path, args) -> tuple[str, dict]:
    """Per-sample RDD vs CE and KD students, fully supervised on a few hundred digits."""
    import torch
    import torch.nn.functional as F

    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.common import accuracy, fit
    from llmkit.vision.loops.distill import train_rdd_student
    from llmkit.vision.models import MLP

    arms = ("ce", "kd", "rdd")
    results = {"teacher": []} | {arm: [] for arm in arms}
    two_head_ce = lambda o, t: F.cross_entropy(o.heads[0], t) + 0.4 * F.cross_entropy(o.heads[1], t)
    for seed in seeds:
        split = load_digits_split(seed)
        pick = np.random.default_rng(seed).choice(len(split.y_train), args.rdd_examples, replace=False)
        x, y, x_test, y_test = as_tensors(split.x_train[pick], split.y_train[pick], split.x_test, split.y_test)
        torch.manual_seed(seed)
        teacher = fit(MLP(64, 10, (512,), num_heads=2), x, y, two_head_ce, steps=300, lr=1e-3, seed=seed)
        results["teacher"].append(accuracy(teacher, x_test, y_test))
        for arm in arms:
            results[arm].append(accuracy(train_rdd_student(x, y, teacher, arm=arm, seed=seed, hidden=(8,)),
                                         x_test, y_test))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(["model", "test acc %", "Δ vs ce (paired)"],
                           [[k, mean_std(v), paired_delta(v, results["ce"])] for k, v in results.items()])
    title = (f"RDD (per-sample port) — digits, {args.rdd_examples} labelled training examples; teacher MLP-512 with "
             "main + auxiliary heads (aux CE weight 0.4); student MLP-8, 400 full-batch Adam steps (lr 1e-2); "
             "RDD = stage 1 (CE weighted by exp(−KL(aux‖main))) for the first 10% of steps, then stage 2 (CE on "
             "XOR-hard examples, τ 0.7), KD T=1 throughout")
    _bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results


def run_rdd_seg(seeds, out: Path, args) -> tuple[str, dict]:
    """Per-pixel RDD vs CE and KD students on synthetic shapes (semantic segmentation, ignore_index 255)."""
    import torch
    import torch.nn.functional as F

    from llmkit.vision.data import SHAPE_CLASSES, as_tensors, make_shapes
    from llmkit.vision.loops.common import fit, segmentation_scores
    from llmkit.vision.loops.distill import RDD_ARMS, train_rdd_student
    from llmkit.vision.losses.distill import IGNORE_INDEX, hard_example_mask
    from llmkit.vision.models import SegNet

    k, batch, steps = len(SHAPE_CLASSES), 32, args.seg_steps
    # The reference keeps the 100,000 hardest of 16 × 512 × 1024 pixels per batch (1.2%); same share here.
    min_kept = round(100_000 / (16 * 512 * 1024) * batch * 32 * 32)
    ce = lambda logits, t: F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX)
    two_head_ce = lambda o, t: ce(o.heads[0], t) + 0.4 * ce(o.heads[1], t)
    metrics = ("miou", "acc")
    results = {m: {"teacher": []} | {arm: [] for arm in RDD_ARMS} for m in metrics}
    results["xor_percent"], results["ignored_percent"] = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x, y = as_tensors(*make_shapes(args.seg_images, rng))
        x_test, y_test = as_tensors(*make_shapes(256, rng))
        results["ignored_percent"].append(float((y == IGNORE_INDEX).float().mean() * 100))
        torch.manual_seed(seed)
        teacher = fit(SegNet(k, 16, (2, 4, 1), num_heads=2), x, y, two_head_ce, epochs=40, batch_size=batch,
                      lr=3e-3, seed=seed)
        scores = {"teacher": segmentation_scores(teacher, x_test, y_test, k)}
        for arm in RDD_ARMS:
            torch.manual_seed(seed)
            student = train_rdd_student(x, y, teacher, arm=arm, seed=seed, steps=steps, stage_one_fraction=0.1,
                                        lr=5e-3, poly_power=0.9, student=SegNet(k, 4, (2,)), batch_size=batch,
                                        min_kept=min_kept)
            scores[arm] = segmentation_scores(student, x_test, y_test, k)
            if arm == "rdd":  # share of valid training pixels stage 2 trains on at the end (XOR-hard)
                with torch.no_grad():
                    hard = lambda model: hard_example_mask(model(x).logits, y)
                    results["xor_percent"].append(float((hard(student) ^ hard(teacher)).sum()
                                                        / (y != IGNORE_INDEX).sum() * 100))
        for name, (miou, acc) in scores.items():
            results["miou"][name].append(miou)
            results["acc"][name].append(acc)
        print(f"  seed {seed}: " + ", ".join(f"{n} {v[0]:.1f}/{v[1]:.1f}" for n, v in scores.items()), flush=True)
    table = markdown_table(
        ["model", "test mIoU %", "Δ mIoU vs ce (paired)", "pixel acc %", "Δ acc vs ce (paired)"],
        [[n, mean_std(results["miou"][n]), paired_delta(results["miou"][n], results["miou"]["ce"]),
          mean_std(results["acc"][n]), paired_delta(results["acc"][n], results["acc"]["ce"])]
         for n in results["miou"]])
    title = (f"RDD (per pixel) — synthetic shapes: 32×32 images with 1–3 squares / discs / triangles (radius 4–9) "
             f"on a N(0, 0.35²)-noise background, 4 classes, shape outlines ignored (label 255, "
             f"{mean_std(results['ignored_percent'])}% of pixels); {args.seg_images} training / 256 test images per "
             "seed. Teacher SegNet-16 (stride 2, dilations 2-4-1, main + auxiliary head, CE + 0.4·aux CE, 40 epochs); "
             f"student SegNet-4 (dilation 2, one head; Adam 5e-3 with the reference's poly decay (power 0.9), batch 32, "
             f"{steps} steps). Teacher Adam 3e-3, batch 32. RDD = stage 1 "
             "(CE weighted by exp(−KL(aux‖main)) per pixel) for the first 10% of steps, then stage 2 (CE on "
             f"XOR-hard pixels, τ 0.7, min_kept {min_kept} = the reference's 1.2% of a batch); KD T=1 throughout "
             f"(kd and rdd). At the end, XOR-hard pixels are {mean_std(results['xor_percent'])}% of valid training "
             "pixels")
    _bar_plot(results["miou"], out / "result.png", "test mIoU %")
    return f"{title}\n\n{table}", results


def run_optimum_shift(seeds, out: Path, args) -> tuple[str, dict]:
    """Optimum shifting of the last layer of an MLP trained on few digits (n < feature dim)."""
    import torch
    import torch.nn.functional as F

    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.common import accuracy, fit
    from llmkit.vision.losses.evidential import CrossEntropy
    from llmkit.vision.models import MLP
    from llmkit.vision.posthoc import input_hessian_trace, optimum_shift_

    keys = ("train loss", "‖W‖_F", "input-Hessian trace", "test acc %")
    results = {"before": {k: [] for k in keys}, "after": {k: [] for k in keys}}

    def measure(model, x, y, x_test, y_test, into):
        model.eval()
        with torch.no_grad():
            out_ = model(x)
            head = model.heads[0]
            into["train loss"].append(float(F.cross_entropy(out_.logits, y)))
            into["‖W‖_F"].append(float(torch.cat([head.weight.flatten(), head.bias]).norm()))
            into["input-Hessian trace"].append(float(input_hessian_trace(head.weight, out_.logits.softmax(1))))
        into["test acc %"].append(accuracy(model, x_test, y_test))

    for seed in seeds:
        split = load_digits_split(seed)
        pick = np.random.default_rng(seed).choice(len(split.y_train), args.labels, replace=False)
        x, y, x_test, y_test = as_tensors(split.x_train[pick], split.y_train[pick], split.x_test, split.y_test)
        torch.manual_seed(seed)
        model = fit(MLP(64, 10, (256,)), x, y, CrossEntropy(), steps=100, lr=1e-3, seed=seed)
        measure(model, x, y, x_test, y_test, results["before"])
        with torch.no_grad():
            features = model(x).features
        optimum_shift_(model.heads[0], features)
        measure(model, x, y, x_test, y_test, results["after"])
    digits = {"test acc %": 1}
    rows = [[k, mean_std(results["before"][k], digits.get(k, 4)), mean_std(results["after"][k], digits.get(k, 4)),
             paired_delta(np.array(results["after"][k]) * 10 ** (digits.get(k, 4) - 1),
                          np.array(results["before"][k]) * 10 ** (digits.get(k, 4) - 1))] for k in keys]
    table = markdown_table(["quantity", "before shift", "after shift", "Δ (paired; ×10³ except acc)"], rows)
    title = (f"Optimum shifting — digits, MLP 64-256-10 trained 100 full-batch Adam steps on {args.labels} labelled "
             f"examples (n = {args.labels} < 256 features); last layer (weight + bias) replaced by the minimum-norm "
             "solution on those training features")
    _bar_plot({f"{k} {when}": results[when][k] for k in ("‖W‖_F",) for when in ("before", "after")},
              out / "result.png", "‖W‖_F")
    return f"{title}\n\n{table}", results


def _bar_plot(results: dict, path: Path, ylabel: str) -> None:
    """Bars of the per-arm mean with std error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(results)
    means = [np.mean(results[n]) for n in names]
    ax.bar(names, means, yerr=[np.std(results[n]) for n in names], capsize=4)
    ax.set_ylabel(ylabel), ax.set_ylim(max(0, min(means) - 15), min(100, max(means) + 5))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


RUNNERS = {"dpc": run_dpc, "openset-al": run_openset_al, "dhkd": run_dhkd, "l2d": run_l2d, "cap": run_cap,
           "cdcr": run_cdcr, "ccmn": run_ccmn, "mogd": run_mogd, "lewis": run_lewis, "flain": run_flain, "fairfal": run_fairfal, "rdd": run_rdd, "rdd-seg": run_rdd_seg, "optimum-shift": run_optimum_shift}


def update_readme(experiment: str, block: str, readme: Path = README) -> None:
    """Replace (or append) the `<!-- results:<experiment> -->` block of the README."""
    start, end = f"<!-- results:{experiment} -->", f"<!-- /results:{experiment} -->"
    text = readme.read_text() if readme.exists() else "# llmkit.vision\n"
    new = f"{start}\n{block}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: new, text) if pattern.search(text) else text.rstrip() + f"\n\n{new}\n"
    readme.write_text(text)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m llmkit.vision.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/vision/<experiment>)")
    parser.add_argument("--no-readme", action="store_true", help="do not write the table into llmkit/vision/README.md")
    parser.add_argument("--tag", default="", help="name a variant run: README block and default folder get '-<tag>'")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--noise", default="symmetric", help="dpc: symmetric | asymmetric | pair")
    parser.add_argument("--rate", type=float, default=0.4, help="dpc: noise rate")
    parser.add_argument("--epochs", type=int, default=None, help="dpc: training epochs (default 60)")
    parser.add_argument("--known", type=int, default=6, help="openset-al: classes 0..known-1 are known")
    parser.add_argument("--initial-per-class", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--false-rate", type=float, default=0.2, help="cdcr: chance a negative becomes a candidate")
    parser.add_argument("--rho-pos", type=float, default=0.3, help="ccmn: P(observed 0 | true 1)")
    parser.add_argument("--rho-neg", type=float, default=0.1, help="ccmn: P(observed 1 | true 0)")
    parser.add_argument("--candidate-rate", type=float, default=0.5, help="mogd: chance a wrong class is a candidate")
    parser.add_argument("--clean-val", type=int, default=50, help="mogd: clean validation examples")
    parser.add_argument("--lewis-budget", type=int, default=150, help="lewis: labels queried at once")
    parser.add_argument("--beta", type=float, default=0.5, help="flain: Dirichlet β of the client split")
    parser.add_argument("--fl-rounds", type=int, default=30, help="flain: FedAvg rounds")
    parser.add_argument("--flain-tolerance", type=float, default=0.05, help="flain: allowed aux-accuracy drop")
    parser.add_argument("--imbalance", type=float, default=0.1, help="fairfal: tail/head class-size ratio")
    parser.add_argument("--fl-beta", type=float, default=0.1, help="fairfal: Dirichlet β of the client split")
    parser.add_argument("--rdd-examples", type=int, default=300, help="rdd: labelled training examples")
    parser.add_argument("--seg-images", type=int, default=512, help="rdd-seg: training images per seed")
    parser.add_argument("--seg-steps", type=int, default=1000, help="rdd-seg: student training steps (batch 32)")
    parser.add_argument("--labels", type=int, default=100,
                        help="dhkd: labelled examples for the student's CE; optimum-shift: training examples")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> dict:
    """Run the requested experiment(s); returns {experiment: raw results}."""
    args = parse_args(argv)
    if args.experiment != "all" and args.experiment not in EXPERIMENTS:
        raise VisionError(f"unknown experiment {args.experiment!r}; choose one of {', '.join(EXPERIMENTS)}, all")
    if len(args.seeds) < 1:
        raise VisionError("give at least one seed")
    import torch

    torch.set_num_threads(args.threads)
    command = "python -m llmkit.vision.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    machine = f"CPU {platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}"
    outputs = {}
    for experiment in EXPERIMENTS if args.experiment == "all" else (args.experiment,):
        name = f"{experiment}-{args.tag}" if args.tag else experiment
        if args.out is None:
            out = Path("outputs/vision") / name
        else:  # with 'all', --out is the parent folder of one folder per experiment
            out = args.out / experiment if args.experiment == "all" else args.out
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {name} (seeds {args.seeds}) → {out}", flush=True)
        started = time.time()
        text, results = RUNNERS[experiment](args.seeds, out, args)
        seconds = time.time() - started
        block = (f"{text}\n\nMean ± std over seeds {', '.join(map(str, args.seeds))}. "
                 f"Date {dt.date.today().isoformat()}; machine: {machine}; wall time {seconds:.0f} s. "
                 f"Command: `{command}`")
        print(f"\n{block}\n", flush=True)
        (out / "results.json").write_text(json.dumps({"experiment": experiment, "seeds": args.seeds, "command": command,
                                                      "machine": machine, "results": results}, default=float))
        if not args.no_readme:
            update_readme(name, block)
        outputs[experiment] = results
    return outputs


if __name__ == "__main__":
    main()
