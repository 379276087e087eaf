"""`python -m llmkit.vision.run l2d`: multi-label student: BCE / BCE+MLD / L2D (synthetic multi-label data)."""

from __future__ import annotations

from pathlib import Path

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "l2d"


def run(seeds, out: Path, args) -> tuple[str, dict]:
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
    table = markdown_table(
        ["model", "test mAP %", "Δ vs bce (paired)"],
        [[k, mean_std(v), paired_delta(v, results["bce"])] for k, v in results.items()],
    )
    title = (
        "L2D vs BCE / MLD — scikit-learn make_multilabel_classification (15 labels, 64 features, 2,000 train / "
        f"1,000 test); teacher LabelWiseMLP-256 ({config.teacher_epochs} epochs), student LabelWiseMLP-16 "
        f"({config.epochs} epochs), label-wise embeddings d={config.embed_dim}, Adam {config.lr}, batch "
        f"{config.batch_size}; 'l2d' = reference weights (λ_logits 10, λ_cd 100, λ_id 1000), 'l2d-scaled' = "
        "λ_cd 1, λ_id 10"
    )
    bar_plot(results, out / "result.png", "test mAP %")
    return f"{title}\n\n{table}", results
