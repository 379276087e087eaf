"""`python -m llmkit.vision.run cdcr`: partial multi-label: naive BCE on candidates vs CDCR curriculum weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "cdcr"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """Partial multi-label: naive BCE on candidates vs CDCR's curriculum weights."""
    from llmkit.vision.data import as_tensors, make_multilabel
    from llmkit.vision.loops.multilabel import train_cdcr
    from llmkit.vision.losses.multilabel import add_false_candidates

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
    table = markdown_table(
        ["training labels", "test mAP %", "Δ vs naive (paired)"],
        [[k, mean_std(v), paired_delta(v, results["naive"])] for k, v in results.items()],
    )
    fp_share = 100 * (1 - y[:2000].sum() / candidates.sum())
    title = (
        f"CDCR — make_multilabel_classification (15 labels), 2,000 train / 1,000 test; candidates = true "
        f"positives + each negative with probability {args.false_rate} ({fp_share:.0f}% of candidates false on "
        "the last seed); MLP-128, BCE, 5 warm-up epochs treating candidates as positives, 30 epochs in all; "
        "CDCR trusts a candidate once p ≥ 0.6. At the end CDCR trusts candidates with precision "
        f"{mean_std([r['trusted_precision'] for r in extra])}% and recall "
        f"{mean_std([r['trusted_recall'] for r in extra])}% of the true positives"
    )
    bar_plot(results, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", {"map": results, "cdcr_trust": extra}
