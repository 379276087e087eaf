"""`python -m llmkit.vision.run mogd`: partial-label digits: uniform / self-training / MoGD candidate weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "mogd"


def run(seeds, out: Path, args) -> tuple[str, dict]:
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
        x, c, x_val, y_val, x_te, y_te = as_tensors(
            split.x_train[train], cand, split.x_train[val], split.y_train[val], split.x_test, split.y_test
        )
        for method in PLL_METHODS:
            results[method].append(train_partial_label(method, x, c, x_val, y_val, x_te, y_te, seed=seed))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(
        ["candidate weights", "test acc %", "Δ vs uniform (paired)"],
        [[k, mean_std(v), paired_delta(v, results["uniform"])] for k, v in results.items()],
    )
    title = (
        f"MoGD (partial labels) — digits; candidate set = true label + each other class with probability "
        f"{args.candidate_rate} (≈{1 + 9 * args.candidate_rate:.1f} candidates); {args.clean_val} clean validation "
        "examples for MoGD's meta-gradient (virtual SGD step 0.1, exponentiated-gradient weight step 1); "
        "MLP-128, Adam 1e-3, batch 64, 30 epochs"
    )
    bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results
