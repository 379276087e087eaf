"""Summarise harness runs (their results.json) as a table and append it to benchmarks/RESULTS.md.

python benchmarks/eval_summary.py outputs/eval/humaneval outputs/eval/scienceqa ...
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADLINE = {"humaneval": "pass@1", "mbpp": "pass@1", "gsm8k": "accuracy", "scienceqa": "accuracy"}


def row(results: dict) -> str:
    """One markdown row: task, model, backend, problems, headline metric, all metrics, wall time, command."""
    metrics = results["metrics"]
    head = HEADLINE.get(results["task"], next(iter(metrics)))
    shown = {k: round(v, 3) for k, v in metrics.items() if not k.startswith("n_")}
    wall = str(results["wall_seconds"])
    if results.get("resumed_problems"):  # the wall time is the last process's only
        wall += f" (resumed: {results['resumed_problems']} problems from earlier runs)"
    return (
        f"| {results['task']} | {results['model']} | {results['generator'].get('backend')} | "
        f"{results['num_problems']} | "
        f"{head} = {metrics[head]:.4g} | {shown} | {wall} | `{results.get('command', '-')}` |"
    )


def main() -> None:
    """Read each folder's results.json, print the table, append it with machine and date."""
    folders = [Path(a) for a in sys.argv[1:]]
    if not folders:
        raise SystemExit(__doc__)
    runs = [json.loads((f / "results.json").read_text()) for f in folders]
    lines = [
        "| task | model | backend | problems | headline | metrics | wall s | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(r) for r in runs]
    table = "\n".join(lines)
    print(table)
    with RESULTS.open("a") as fh:
        fh.write(
            f"\n## Harness runs\n\n- date: {dt.date.today().isoformat()}\n- machine: CPU {platform.machine()} "
            f"(2 cores)\n"
            f"- command: `python {' '.join(sys.argv)}`; each run's own command is in the table\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
