"""`python -m llmkit.vision.run fairfal`: federated AL on long-tailed non-IID digits: random / entropy / FairFAL."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import markdown_table, mean_std, paired_delta, pyplot

NAME = "fairfal"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """Federated AL on long-tailed, non-IID digits: random vs entropy vs FairFAL (balanced accuracy per cycle)."""
    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.federated_al import (
        FEDERATED_STRATEGIES,
        FederatedALConfig,
        federated_active_learning,
        long_tail_indices,
    )

    config = FederatedALConfig(beta=args.fl_beta)
    results = {s: [] for s in FEDERATED_STRATEGIES}
    for seed in seeds:
        split = load_digits_split(seed)
        keep = long_tail_indices(split.y_train, args.imbalance, np.random.default_rng(seed))
        x, x_te, y_te = as_tensors(split.x_train[keep], split.x_test, split.y_test)
        for strategy in FEDERATED_STRATEGIES:
            curve, fractions = federated_active_learning(
                strategy, x, split.y_train[keep], x_te, y_te, seed=seed, config=config
            )
            results[strategy].append(curve)
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1][-1]:.1f}" for k, v in results.items()), flush=True)
    final = {k: [c[-1] for c in v] for k, v in results.items()}
    area = {k: [float(np.mean(c[1:])) for c in v] for k, v in results.items()}
    rows = [
        [
            k,
            mean_std(final[k]),
            paired_delta(final[k], final["random"]),
            mean_std(area[k]),
            paired_delta(area[k], area["random"]),
        ]
        for k in results
    ]
    table = markdown_table(
        [
            "strategy",
            f"balanced test acc % at {fractions[-1]:.0%} labelled",
            "Δ vs random (paired)",
            "mean over query cycles",
            "Δ vs random (paired)",
        ],
        rows,
    )
    title = (
        f"FairFAL — digits made long-tailed (imbalance {args.imbalance}: {len(keep)} train examples on the last "
        f"seed), {config.num_clients} clients by Dirichlet β={config.beta}; {config.initial_fraction:.0%} labelled "
        f"at start, +{config.query_fraction:.0%} of each client's data per cycle, {config.cycles} cycles; each cycle "
        f"a fresh FedAvg ({config.fl_rounds} rounds × {config.local_epochs} local epochs, SGD {config.lr}, batch "
        f"{config.batch_size}), MLP 64-128; balanced accuracy on the (balanced) digits test split"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curves in results.items():
        curves = np.asarray(curves)
        ax.plot(fractions, curves.mean(0), label=name)
        ax.fill_between(fractions, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
    ax.set_xlabel("labelled fraction"), ax.set_ylabel("balanced test accuracy %"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "learning_curve.png", dpi=120), plt.close(fig)
    return f"{title}\n\n{table}", results
