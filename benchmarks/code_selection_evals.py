"""HumanEval / MBPP of the code-selection SFT arms side by side, with paired comparisons; appends to RESULTS.md.

Each arm is a LoRA run folder of recipes/code_selection (or a harness output folder for the base model) with
`eval-humaneval/` and `eval-mbpp/` inside (what `llmkit eval --output_dir RUN/eval-<task>` writes):

    python benchmarks/code_selection_evals.py base=/work/runs/code-eval-base \
        full=outputs/code_selection-smollm2-full random=outputs/code_selection-smollm2-random \
        cdas=outputs/code_selection-smollm2-cdas

A folder may also hold the task runs directly as `<folder>-humaneval` / `<folder>-mbpp` (the base model's runs).
Pairs of arms are compared on the same problems: how many each solves that the other does not, and the
two-sided exact McNemar p-value over those discordant problems (a small p: the arms differ beyond chance).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from itertools import combinations
from math import comb
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
TASKS = ("humaneval", "mbpp")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(a binomial(n, 1/2) split at least as uneven as only_a vs only_b)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def task_folder(arm: Path, task: str) -> Path | None:
    """The arm's harness output for `task`: ARM/eval-TASK, or ARM-TASK for a bare harness run."""
    for folder in (arm / f"eval-{task}", arm.with_name(f"{arm.name}-{task}")):
        if (folder / "samples.jsonl").is_file():
            return folder
    return None


def solved(folder: Path) -> dict[str, bool]:
    """Problem id → whether its first completion passed."""
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: bool(r["completions"][0].get("passed")) for r in rows}


def held_out_loss(arm: Path) -> float | None:
    """The last eval_loss the trainer logged for a run folder (None for a bare harness run)."""
    metrics = arm / "metrics.jsonl"
    if not metrics.is_file():
        return None
    losses = [r["eval_loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "eval_loss" in r]
    return losses[-1] if losses else None


def main() -> None:
    """Print the per-arm table and the paired comparisons; append both to RESULTS.md."""
    pairs = [a.split("=", 1) for a in sys.argv[1:]]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise SystemExit(__doc__)
    arms = {name: Path(path) for name, path in pairs}
    runs = {name: {t: task_folder(path, t) for t in TASKS} for name, path in arms.items()}
    outcome = {name: {t: solved(f) for t, f in tasks.items() if f} for name, tasks in runs.items()}
    lines = [
        "| arm | held-out loss | " + " | ".join(f"{t} pass@1 % (solved)" for t in TASKS) + " |",
        "|---|---|" + "---|" * len(TASKS),
    ]
    for name, arm in arms.items():
        loss = held_out_loss(arm)
        cells = []
        for t in TASKS:
            got = outcome[name].get(t)
            cells.append(f"{100 * sum(got.values()) / len(got):.1f} ({sum(got.values())}/{len(got)})" if got else "–")
        lines.append(f"| {name} | {'–' if loss is None else f'{loss:.3f}'} | " + " | ".join(cells) + " |")
    lines += ["", "| pair (a vs b) | task | both | only a | only b | McNemar p |", "|---|---|---|---|---|---|"]
    for a, b in combinations(arms, 2):
        for t in TASKS:
            if t not in outcome[a] or t not in outcome[b]:
                continue
            ids = outcome[a][t].keys() & outcome[b][t].keys()
            both = sum(outcome[a][t][i] and outcome[b][t][i] for i in ids)
            only_a = sum(outcome[a][t][i] and not outcome[b][t][i] for i in ids)
            only_b = sum(outcome[b][t][i] and not outcome[a][t][i] for i in ids)
            lines.append(f"| {a} vs {b} | {t} | {both} | {only_a} | {only_b} | {mcnemar_exact(only_a, only_b):.2f} |")
    table = "\n".join(lines)
    print(table)
    sources = "; ".join(f"{n}: {f}" for n, tasks in runs.items() for f in tasks.values() if f)
    with RESULTS.open("a") as fh:
        fh.write(
            f"\n## Code selection arms: HumanEval and MBPP (greedy)\n\n- date: {dt.date.today().isoformat()}\n"
            f"- machine: CPU {platform.machine()} (2 cores)\n- command: `python {' '.join(sys.argv)}`\n"
            f"- runs: {sources}\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
