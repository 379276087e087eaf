"""`python -m llmkit.vision.run flain`: FedAvg with backdoor clients: attack success before/after the FLAIN defence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.vision.experiments._common import bar_plot, markdown_table, mean_std, paired_delta

NAME = "flain"


def run(seeds, out: Path, args) -> tuple[str, dict]:
    """FedAvg on digits with backdoor clients; attack success and clean accuracy before/after FLAIN."""
    import torch

    from llmkit.vision.data import as_tensors, initial_labelled, load_digits_split
    from llmkit.vision.loops.federated import dirichlet_split, fedavg
    from llmkit.vision.models import MLP
    from llmkit.vision.posthoc import add_trigger, flain_defence

    target_class, num_clients, malicious = 0, 10, 2
    keys = ("clean test acc %", "attack success %")
    results = {"no defence": {k: [] for k in keys}, "FLAIN": {k: [] for k in keys}, "flipped neurons": []}

    def measure(model, x_te, y_te, into):
        model.eval()
        with torch.no_grad():
            into["clean test acc %"].append(float((model(x_te).logits.argmax(1) == y_te).float().mean() * 100))
            victims = x_te[y_te != target_class]
            into["attack success %"].append(
                float((model(add_trigger(victims)).logits.argmax(1) == target_class).float().mean() * 100)
            )

    for seed in seeds:
        rng = np.random.default_rng(seed)
        split = load_digits_split(seed)
        aux = initial_labelled(split.y_test, 5, rng)  # FLAIN's small clean auxiliary set: 5 per class
        rest = np.setdiff1d(np.arange(len(split.y_test)), aux)
        x, y = as_tensors(split.x_train, split.y_train)
        x_aux, y_aux, x_te, y_te = as_tensors(
            split.x_test[aux], split.y_test[aux], split.x_test[rest], split.y_test[rest]
        )
        clients = []
        for c, idx in enumerate(dirichlet_split(split.y_train, num_clients, args.beta, rng)):
            cx, cy = x[torch.as_tensor(idx)].clone(), y[torch.as_tensor(idx)].clone()
            if c < malicious:  # poison half of the malicious clients' data: trigger + target label
                poison = torch.as_tensor(rng.random(len(cy)) < 0.5)
                cx[poison], cy[poison] = add_trigger(cx[poison]), target_class
            clients.append((cx, cy))
        torch.manual_seed(seed)
        model, initial = fedavg(MLP(64, 10, (128,)), clients, rounds=args.fl_rounds, seed=seed)
        measure(model, x_te, y_te, results["no defence"])
        head = model.heads[0]
        with torch.no_grad():
            activation = model(x_aux).features.mean(0)

        def aux_accuracy(weight):
            original = head.weight.detach().clone()
            with torch.no_grad():
                head.weight.copy_(weight)
                acc = float((model(x_aux).logits.argmax(1) == y_aux).float().mean())
                head.weight.copy_(original)
            return acc

        defended, _, flipped = flain_defence(
            initial["heads.0.weight"],
            head.weight.detach().clone(),
            activation,
            aux_accuracy,
            tolerance=args.flain_tolerance,
        )
        with torch.no_grad():
            head.weight.copy_(defended)
        measure(model, x_te, y_te, results["FLAIN"])
        results["flipped neurons"].append(flipped)
        print(
            f"  seed {seed}: ASR {results['no defence']['attack success %'][-1]:.1f} → "
            f"{results['FLAIN']['attack success %'][-1]:.1f}, flipped {flipped}",
            flush=True,
        )
    rows = [
        [
            k,
            mean_std(results["no defence"][k]),
            mean_std(results["FLAIN"][k]),
            paired_delta(results["FLAIN"][k], results["no defence"][k]),
        ]
        for k in keys
    ]
    table = markdown_table(["metric", "no defence", "FLAIN", "Δ (paired)"], rows)
    title = (
        f"FLAIN — digits, FedAvg over {num_clients} clients (Dirichlet β={args.beta}), {args.fl_rounds} rounds × 2 "
        f"local epochs (SGD 0.05, momentum 0.9), MLP 64-128-10; {malicious} malicious clients relabel half their "
        f"data as class {target_class} with a 2×2 corner trigger; FLAIN on the last layer with 5 clean "
        f"examples per class, tolerance {args.flain_tolerance}; "
        f"{mean_std(results['flipped neurons'])} of 128 input neurons flipped"
    )
    bar_plot({f"{k} / {w}": results[w][k] for k in keys for w in ("no defence", "FLAIN")}, out / "result.png", "%")
    return f"{title}\n\n{table}", results
