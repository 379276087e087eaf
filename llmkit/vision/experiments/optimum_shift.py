"""`python -m llmkit.vision.run optimum-shift`: min-norm last layer: loss unchanged, ‖W‖ and input-Hessian trace
before/after."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "optimum-shift"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """Optimum shifting of the last layer of an MLP trained on few digits (n < feature dim)."""
    import torch
    import torch.nn.functional as F

    from llmkit.vision.data import as_tensors, load_digits_split
    from llmkit.vision.loops.common import accuracy, fit
    from llmkit.vision.losses.evidential import CrossEntropy
    from llmkit.vision.models import MLP
    from llmkit.vision.posthoc import input_hessian_trace, optimum_shift_

    keys = ("train loss", "‖W‖_F", "input-Hessian trace", "test acc %")
    results = {"before": {k: [] for k in keys}, "after": {k: [] for k in keys}}

    def measure(model, x, y, x_test, y_test, into):
        model.eval()
        with torch.no_grad():
            out_ = model(x)
            head = model.heads[0]
            into["train loss"].append(float(F.cross_entropy(out_.logits, y)))
            into["‖W‖_F"].append(float(torch.cat([head.weight.flatten(), head.bias]).norm()))
            into["input-Hessian trace"].append(float(input_hessian_trace(head.weight, out_.logits.softmax(1))))
        into["test acc %"].append(accuracy(model, x_test, y_test))

    for seed in seeds:
        split = load_digits_split(seed)
        pick = np.random.default_rng(seed).choice(len(split.y_train), args.labels, replace=False)
        x, y, x_test, y_test = as_tensors(split.x_train[pick], split.y_train[pick], split.x_test, split.y_test)
        torch.manual_seed(seed)
        model = fit(MLP(64, 10, (256,)), x, y, CrossEntropy(), steps=100, lr=1e-3, seed=seed)
        measure(model, x, y, x_test, y_test, results["before"])
        with torch.no_grad():
            features = model(x).features
        optimum_shift_(model.heads[0], features)
        measure(model, x, y, x_test, y_test, results["after"])
    digits = {"test acc %": 1}
    rows = [
        [
            k,
            mean_std(results["before"][k], digits.get(k, 4)),
            mean_std(results["after"][k], digits.get(k, 4)),
            paired_delta(
                np.array(results["after"][k]) * 10 ** (digits.get(k, 4) - 1),
                np.array(results["before"][k]) * 10 ** (digits.get(k, 4) - 1),
            ),
        ]
        for k in keys
    ]
    table = markdown_table(["quantity", "before shift", "after shift", "Δ (paired; ×10³ except acc)"], rows)
    title = (
        f"Optimum shifting — digits, MLP 64-256-10 trained 100 full-batch Adam steps on {args.labels} labelled "
        f"examples (n = {args.labels} < 256 features); last layer (weight + bias) replaced by the minimum-norm "
        "solution on those training features"
    )
    bar_plot(
        {f"{k} {when}": results[when][k] for k in ("‖W‖_F",) for when in ("before", "after")},
        out / "result.png",
        "‖W‖_F",
    )
    return f"{title}\n\n{table}", results
