"""Print a Markdown table of results.json files: emission, retain perplexity, sharpness, relearning curves.

python recipes/sare/summarize.py outputs/sare-smollm2-sare outputs/sare-smollm2-efuf outputs/sare-smollm2-ga
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(folders: list[str]) -> str:
    """One row per run folder (plus the taught model from the first), as Markdown."""
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    rhos = list(runs[0]["unlearned"].get("sharpness", {}))
    sizes = [c["n"] for c in runs[0]["relearn"]]
    head = (
        ["model", "emission", "forget CE", "ppl text", "ppl facts"]
        + [f"{k} ρ={r}" for r in rhos for k in ("rand ΔCE", "adv ΔCE")]
        + [f"emission after N={n}" for n in sizes]
        + [f"forget CE after N={n}" for n in sizes]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, ev, curve):
        cells = [
            name,
            f"{ev['emission']:.3f}",
            f"{ev['forget_ce']:.3f}",
            f"{ev['retain_ppl_text']:.2f}",
            f"{ev['retain_ppl_facts']:.3f}",
        ]
        for r in rhos:
            s = ev.get("sharpness", {}).get(r)
            cells += [f"{s['random']:+.4f}", f"{s['adversarial']:.4f}"] if s else ["", ""]
        cells += [f"{c['emission']:.3f}" for c in curve] if curve else [""] * len(sizes)
        cells += [f"{c['forget_ce']:.3f}" for c in curve] if curve else [""] * len(sizes)
        lines.append("| " + " | ".join(cells) + " |")

    row("taught (before unlearning)", runs[0]["taught"], None)
    for run in runs:
        u = run["config"]["method"]["unlearning"]
        name = run["algorithm"]
        if name == "sare":  # ρ = 0 is the plain step: EFUF with the forget term scaled by λ₁ (a control)
            name = (
                f"sare (ρ={u['rho']}, λ₁={u['lambda1']})"
                if u["rho"] > 0
                else f"efuf, forget ×{u['lambda1']} (sare ρ=0)"
            )
        row(name, run["unlearned"], run["relearn"])
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
