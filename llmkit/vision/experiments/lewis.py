"""`python -m llmkit.vision.run lewis`: one-shot multi-model AL: Lewis-weight vs uniform sampling (least-squares
heads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "lewis"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """One-shot multi-model AL: Lewis-weight sampling vs uniform sampling, least-squares heads on 3 feature maps."""
    from sklearn.decomposition import PCA

    from llmkit.vision.data import load_digits_split
    from llmkit.vision.strategies.lewis import (
        multi_model_sampling_probabilities,
        sample_without_replacement,
        weighted_least_squares_head,
    )

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
        chosen = {
            "uniform": (rng.choice(len(split.y_train), args.lewis_budget, replace=False), np.ones(args.lewis_budget)),
            "lewis": sample_without_replacement(q, args.lewis_budget, rng),
        }
        for sampler, (idx, weights) in chosen.items():
            for name, f_tr, f_te in zip(names, train_maps, test_maps):
                head = weighted_least_squares_head(f_tr[idx], split.y_train[idx], 10, weights)
                results[f"{sampler} / {name}"].append(float(((f_te @ head).argmax(1) == split.y_test).mean() * 100))
    rows = [
        [k, mean_std(v), paired_delta(v, results[k.replace("lewis", "uniform")]) if k.startswith("lewis") else "–"]
        for k, v in results.items()
    ]
    table = markdown_table(["sampler / feature map", "test acc %", "Δ vs uniform (paired)"], rows)
    title = (
        f"Lewis-weight one-shot AL — digits; {args.lewis_budget} labels queried at once for 3 models (feature "
        "maps: raw pixels, PCA-16, random ReLU-48, each + bias); p = 2 (leverage scores), sampling ∝ max over "
        "models, importance weights 1/q, ridge-1e-3 least-squares one-hot heads; uniform = same budget drawn "
        "uniformly, unweighted"
    )
    bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results
