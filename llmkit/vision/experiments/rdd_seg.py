"""`python -m llmkit.vision.run rdd-seg`: per-pixel RDD vs CE and KD students on synthetic shapes (segmentation:
mIoU, pixel accuracy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "rdd-seg"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """Per-pixel RDD vs CE and KD students on synthetic shapes (semantic segmentation, ignore_index 255)."""
    import torch
    import torch.nn.functional as F

    from llmkit.vision.data import SHAPE_CLASSES, as_tensors, make_shapes
    from llmkit.vision.loops.common import fit, segmentation_scores
    from llmkit.vision.loops.distill import RDD_ARMS, train_rdd_student
    from llmkit.vision.losses.distill import IGNORE_INDEX, hard_example_mask
    from llmkit.vision.models import SegNet

    k, batch, steps = len(SHAPE_CLASSES), 32, args.seg_steps
    # The reference keeps the 100,000 hardest of 16 × 512 × 1024 pixels per batch (1.2%); same share here.
    min_kept = round(100_000 / (16 * 512 * 1024) * batch * 32 * 32)
    ce = lambda logits, t: F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX)
    two_head_ce = lambda o, t: ce(o.heads[0], t) + 0.4 * ce(o.heads[1], t)
    metrics = ("miou", "acc")
    results = {m: {"teacher": []} | {arm: [] for arm in RDD_ARMS} for m in metrics}
    results["xor_percent"], results["ignored_percent"] = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x, y = as_tensors(*make_shapes(args.seg_images, rng))
        x_test, y_test = as_tensors(*make_shapes(256, rng))
        results["ignored_percent"].append(float((y == IGNORE_INDEX).float().mean() * 100))
        torch.manual_seed(seed)
        teacher = fit(
            SegNet(k, 16, (2, 4, 1), num_heads=2), x, y, two_head_ce, epochs=40, batch_size=batch, lr=3e-3, seed=seed
        )
        scores = {"teacher": segmentation_scores(teacher, x_test, y_test, k)}
        for arm in RDD_ARMS:
            torch.manual_seed(seed)
            student = train_rdd_student(
                x,
                y,
                teacher,
                arm=arm,
                seed=seed,
                steps=steps,
                stage_one_fraction=0.1,
                lr=5e-3,
                poly_power=0.9,
                student=SegNet(k, 4, (2,)),
                batch_size=batch,
                min_kept=min_kept,
            )
            scores[arm] = segmentation_scores(student, x_test, y_test, k)
            if arm == "rdd":  # share of valid training pixels stage 2 trains on at the end (XOR-hard)
                with torch.no_grad():
                    hard = lambda model: hard_example_mask(model(x).logits, y)
                    results["xor_percent"].append(
                        float((hard(student) ^ hard(teacher)).sum() / (y != IGNORE_INDEX).sum() * 100)
                    )
        for name, (miou, acc) in scores.items():
            results["miou"][name].append(miou)
            results["acc"][name].append(acc)
        print(f"  seed {seed}: " + ", ".join(f"{n} {v[0]:.1f}/{v[1]:.1f}" for n, v in scores.items()), flush=True)
    table = markdown_table(
        ["model", "test mIoU %", "Δ mIoU vs ce (paired)", "pixel acc %", "Δ acc vs ce (paired)"],
        [
            [
                n,
                mean_std(results["miou"][n]),
                paired_delta(results["miou"][n], results["miou"]["ce"]),
                mean_std(results["acc"][n]),
                paired_delta(results["acc"][n], results["acc"]["ce"]),
            ]
            for n in results["miou"]
        ],
    )
    title = (
        f"RDD (per pixel) — synthetic shapes: 32×32 images with 1–3 squares / discs / triangles (radius 4–9) "
        f"on a N(0, 0.35²)-noise background, 4 classes, shape outlines ignored (label 255, "
        f"{mean_std(results['ignored_percent'])}% of pixels); {args.seg_images} training / 256 test images per "
        "seed. Teacher SegNet-16 (stride 2, dilations 2-4-1, main + auxiliary head, CE + 0.4·aux CE, 40 epochs); "
        f"student SegNet-4 (dilation 2, one head; Adam 5e-3 with the reference's poly decay (power 0.9), batch 32, "
        f"{steps} steps). Teacher Adam 3e-3, batch 32. RDD = stage 1 "
        "(CE weighted by exp(−KL(aux‖main)) per pixel) for the first 10% of steps, then stage 2 (CE on "
        f"XOR-hard pixels, τ 0.7, min_kept {min_kept} = the reference's 1.2% of a batch); KD T=1 throughout "
        f"(kd and rdd). At the end, XOR-hard pixels are {mean_std(results['xor_percent'])}% of valid training "
        "pixels"
    )
    bar_plot(results["miou"], out / "result.png", "test mIoU %")
    return f"{title}\n\n{table}", results
