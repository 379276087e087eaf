"""`python -m llmkit.vision.run openset-al`: random / entropy / LfOSA / EAOA / BUAL / E2OAL / DCFS on open-set
digits (known 0-5, unknown 6-9): query precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import band, markdown_table, mean_std, paired_delta, pyplot

NAME = "openset-al"


def run(seeds, out: Path, args) -> tuple[str, dict]:
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
            stateio = StateIO(
                seed,
                np.arange(len(x)),
                np.arange(len(x_test)),
                init_l,
                init_u,
                saving_path=out / "states" / f"{name}_seed{seed}.json",
            )
            loop = ActiveLoop(
                x,
                Oracle(split.y_train, known_classes=known),
                make_strategy(name, len(known)),
                StoppingCriteria("num_of_queries", args.rounds),
                stateio,
                x_test=x_test,
                y_test=y_test,
                num_known=len(known),
                seed=seed,
                config=config,
            )
            loop.run()
            results[name].append(
                {
                    "initial": stateio.initial_point,
                    "accuracy": [s["performance"] for s in stateio],
                    "precision": [s["query_precision"] * 100 for s in stateio],
                    "known_labelled": stateio[-1]["num_labelled"] - len(init_l),
                    "k1": [s["strategy_state"].get("k1") for s in stateio],
                }
            )
            print(
                f"  seed {seed} {name:<8} precision {np.mean(results[name][-1]['precision']):.1f} "
                f"acc {results[name][-1]['accuracy'][-1]:.1f}",
                flush=True,
            )
    final = {name: [r["accuracy"][-1] for r in runs] for name, runs in results.items()}
    rows = [
        [
            name,
            mean_std([np.mean(r["precision"]) for r in runs]),
            mean_std([r["known_labelled"] for r in runs]),
            mean_std(final[name]),
            paired_delta(final[name], final["random"]),
        ]
        for name, runs in results.items()
    ]
    pool_unknown = 100 * (1 - np.isin(split.y_train, known).mean())
    table = markdown_table(
        [
            "strategy",
            "mean query precision %",
            "known examples bought",
            "final known-class test acc %",
            "Δ acc vs random (paired)",
        ],
        rows,
    )
    title = (
        f"Open-set AL — digits, known {known[0]}–{known[-1]}, unknown the rest ({pool_unknown:.0f}% of the "
        f"pool); {args.initial_per_class} labelled per known class at start; {args.rounds} rounds × "
        f"{args.budget} queries; MLP 64-128-128, {config.target_steps} full-batch Adam steps per model, fresh "
        f"models each round. Initial accuracy {mean_std([r['initial'] for r in results['random']])}."
    )
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in results.items():
        band(axes[0], [r["accuracy"] for r in runs], name)
        band(axes[1], [r["precision"] for r in runs], name)
    axes[0].set_xlabel("query round"), axes[0].set_ylabel("known-class test accuracy %")
    axes[1].set_xlabel("query round"), axes[1].set_ylabel("query precision %")
    axes[0].legend(), fig.tight_layout(), fig.savefig(out / "learning_curve.png", dpi=120), plt.close(fig)
    return f"{title}\n\n{table}", results
