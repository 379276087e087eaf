"""`python -m llmkit.vision.run dhkd`: student CE / KD / BinaryKL / DHKD (± gradient alignment) / DHKD+KD."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "dhkd"


def run(seeds, out: Path, args) -> tuple[str, dict]:
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
            student = train_student(
                mode, x, y, labelled, teacher_logits, gradient_alignment=ga, seed=seed, config=config
            )
            results[f"{mode}{' + GA' if ga else ''}"].append(student_accuracy(student, x_test, y_test))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    table = markdown_table(
        ["model", "test acc %", "Δ vs ce (paired)"],
        [[k, mean_std(v), paired_delta(v, results["ce"])] for k, v in results.items()],
    )
    title = (
        f"DHKD vs KD — digits; teacher MLP-512 on all train labels; student MLP-32 with {args.labels} labels "
        f"for CE and all train inputs for distillation; {config.student_steps} full-batch Adam steps "
        f"(lr {config.lr}); KD T={config.kd_temperature}, BinaryKL(-Norm) T={config.binary_temperature}, α=1"
    )
    bar_plot(results, out / "result.png", "test accuracy %")
    return f"{title}\n\n{table}", results
