"""`python -m llmkit.vision.run cap`: semi-supervised multi-label: supervised / fixed-0.5 / CAP pseudo-labels."""

from __future__ import annotations

from pathlib import Path

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "cap"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """SSMLL: supervised warm-up only vs fixed-0.5 pseudo-labels vs CAP's prior-matched pseudo-labels."""
    from llmkit.vision.data import as_tensors, make_multilabel
    from llmkit.vision.loops.multilabel import PSEUDO_LABEL_RULES, CAPConfig, train_cap

    config = CAPConfig()
    results = {rule: [] for rule in PSEUDO_LABEL_RULES}
    for seed in seeds:
        x, y = make_multilabel(4000, 64, 15, seed=seed)
        x_lab, y_lab, x_unl, y_unl, x_te, y_te = as_tensors(
            x[:150], y[:150], x[150:3000], y[150:3000], x[3000:], y[3000:]
        )
        for rule in PSEUDO_LABEL_RULES:
            r = train_cap(rule, x_lab, y_lab, x_unl, y_unl, x_te, y_te, seed=seed, config=config)
            results[rule].append({"map": r.map, "precision": r.precision, "recall": r.recall})
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]['map']:.1f}" for k, v in results.items()), flush=True)
    rows = []
    for rule, runs in results.items():
        pr = [r for r in runs if r["precision"] is not None]
        maps = [r["map"] for r in runs]
        rows.append(
            [
                rule,
                mean_std(maps),
                paired_delta(maps, [r["map"] for r in results["supervised"]]),
                mean_std([r["precision"] for r in pr]) if pr else "–",
                mean_std([r["recall"] for r in pr]) if pr else "–",
            ]
        )
    table = markdown_table(
        [
            "pseudo-labels",
            "test mAP %",
            "Δ vs supervised (paired)",
            "pseudo-label precision %",
            "pseudo-label recall %",
        ],
        rows,
    )
    title = (
        "CAP vs fixed threshold — make_multilabel_classification (15 labels), 150 labelled / 2,850 unlabelled / "
        f"1,000 test; MLP-128, ASL (γ⁻ 4, γ⁺ 0, clip 0.05); {config.warmup_steps} warm-up steps on labelled "
        f"data, then {config.rounds} rounds × {config.steps_per_round} full-batch steps with pseudo-labels "
        "re-estimated each round ('supervised' keeps training on labelled data only)"
    )
    bar_plot({k: [r["map"] for r in v] for k, v in results.items()}, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", results
