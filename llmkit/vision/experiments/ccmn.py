"""`python -m llmkit.vision.run ccmn`: class-conditional multi-label noise: BCE vs unbiased corrected BCE."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "ccmn"


def run(seeds, out: Path, args) -> tuple[str, dict]:
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
        results["clean labels (oracle)"].append(
            train_ccmn("bce", x_tr, y_tr, x_te, y_te, rho_pos=0, rho_neg=0, seed=seed)
        )
        for arm in ("bce", "ccmn"):
            results[arm].append(train_ccmn(arm, x_tr, n_tr, x_te, y_te, rho_pos=rho_pos, rho_neg=rho_neg, seed=seed))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(
        ["training", "clean-test mAP %", "Δ vs bce (paired)"],
        [[k, mean_std(v), paired_delta(v, results["bce"])] for k, v in results.items()],
    )
    title = (
        f"CCMN — make_multilabel_classification (15 labels), 2,000 train / 1,000 clean test; every label "
        f"flipped class-conditionally with ρ⁺ = P(1→0) = {rho_pos}, ρ⁻ = P(0→1) = {rho_neg} (rates known to "
        "CCMN); MLP-128, Adam 1e-3, batch 64, 20 epochs"
    )
    bar_plot(results, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", results
