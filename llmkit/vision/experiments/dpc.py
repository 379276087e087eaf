"""`python -m llmkit.vision.run dpc`: CE vs DPC's evidential loss (± GMM clean-sample selection) vs BLDR-lite, on
noisy labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import band, markdown_table, mean_std, paired_delta, pyplot

NAME = "dpc"


def run(seeds, out: Path, args) -> tuple[str, dict]:
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
            results[method].append(
                {"accuracy": r.accuracy, "kept": r.kept, "kept_precision": r.kept_precision, "curve": r.curve}
            )
            print(f"  seed {seed} {method:<11} acc {r.accuracy:.1f}", flush=True)
    actual = float(np.mean(noisy != split.y_train) * 100)
    rows = []
    for method, runs in results.items():
        kept = [r["kept_precision"] for r in runs if r["kept_precision"] is not None]
        acc = [r["accuracy"] for r in runs]
        rows.append(
            [
                method,
                mean_std(acc),
                paired_delta(acc, [r["accuracy"] for r in results["ce"]]),
                mean_std(kept) if kept else "–",
                mean_std([r["kept"] for r in runs]) if kept else "–",
            ]
        )
    table = markdown_table(
        ["method", "test acc %", "Δ vs ce (paired)", "kept-set label precision %", "kept examples"], rows
    )
    title = (
        f"Noisy labels: DPC and BLDR vs CE — digits, {args.rate:.0%} {args.noise} noise (realised flip rate "
        f"{actual:.0f}% on the last "
        f"seed), MLP 64-256-256, Adam 1e-3, batch 64, {config.epochs} epochs ({config.warmup_epochs} warm-up "
        f"before selection)"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in results.items():
        band(ax, [r["curve"] for r in runs], method)
    (
        ax.set_xlabel("epoch"),
        ax.set_ylabel("test accuracy %"),
        ax.set_title(f"digits, {args.rate:.0%} {args.noise} noise"),
    )
    ax.legend(), fig.tight_layout(), fig.savefig(out / "learning_curve.png", dpi=120), plt.close(fig)
    return f"{title}\n\n{table}", results
