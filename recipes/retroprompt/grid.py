"""The RetroPrompt ablation grid: arms × shots × seeds, one training run each, then mean ± std.

    # the issue's table on SST-2 (paper schedule from the config; hours per run on CPU, a GPU job)
    python recipes/retroprompt/grid.py --config recipes/retroprompt/configs/smollm2_sst2.yaml --root outputs/retro-grid
    # a shortened CPU schedule: any recipe override after `--` goes to every run
    python recipes/retroprompt/grid.py --config recipes/retroprompt/configs/smollm2_sst2.yaml --root outputs/retro-grid-cpu \\
        --seeds 13 21 42 --shots 16 -- --trainer.max_steps 40 --trainer.eval_steps 0 --method.eval_limit 300
    # ScienceQA subject task (the config's text-hash split: k-shot rows drawn per seed from the pool)
    python recipes/retroprompt/grid.py --config recipes/retroprompt/configs/smollm2_scienceqa_subject.yaml --root ...

Arms (the issue's table): plain prompt tuning; + neural demonstrations; + kNN-guided training; + kNN
inference (the plain run's kNN-interpolated accuracy: the same training, so no extra run); full RetroPrompt
(all three). Each run is `recipes/retroprompt/train.py` in its own process, in
`ROOT/<shots>shot-seed<seed>-<arm>/` with its command in `command.json`; a run whose results.json exists
and whose command is the same is not repeated, so an interrupted grid resumes (a finished run made by
another command is an error: use another --root). The table (`ROOT/grid.md`, `ROOT/grid.json`) reports
accuracy in %, mean ± standard deviation over the seeds that finished (population std, ddof 0, as
LM-BFF's `gather_result.py`, whose seeds and protocol the paper follows), with the count when some
are missing.
"""

from __future__ import annotations

import argparse
import json
import statistics

import yaml
import subprocess
import sys
from pathlib import Path
from typing import Any

RECIPE = Path(__file__).with_name("train.py")
SEEDS = (13, 21, 42, 87, 100)  # LM-BFF's k-shot split seeds
# training arm -> recipe overrides; every arm sets all three switches explicitly
TRAINING_ARMS: dict[str, dict[str, str]] = {
    "plain": {"use_demonstrations": "false", "knn_train": "false", "knn_infer": "false"},
    "demonstrations": {"use_demonstrations": "true", "knn_train": "false", "knn_infer": "false"},
    "knn_train": {"use_demonstrations": "false", "knn_train": "true", "knn_infer": "false"},
    "full": {"use_demonstrations": "true", "knn_train": "true", "knn_infer": "true"},
}
# table row -> (training arm, accuracy field of its results.json)
TABLE_ROWS: dict[str, tuple[str, str]] = {
    "plain prompt tuning": ("plain", "accuracy_lm"),
    "+ neural demonstrations": ("demonstrations", "accuracy_lm"),
    "+ kNN-guided training": ("knn_train", "accuracy_lm"),
    "+ kNN inference": ("plain", "accuracy_interpolated"),
    "full RetroPrompt": ("full", "accuracy_interpolated"),
}


# Overrides the grid sets itself; passing them after `--` would contradict the run folders' names.
GRID_KEYS = ("--trainer.seed", "--trainer.output_dir", "--method.shots_per_class", "--method.train_path",
             "--method.retroprompt.demo_topk", "--method.retroprompt.use_demonstrations",
             "--method.retroprompt.knn_train", "--method.retroprompt.knn_infer")
DEMO_TOPK = {16: 8, 4: 2}  # demonstration neighbours per class: 8 at 16-shot (the configs), 2 at 4-shot


def task_split(config_path: str) -> str:
    """"text_hash" when the config draws its k-shot rows from a pool (ScienceQA subject), else "files"
    (per-seed LM-BFF k-shot files, SST-2)."""
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    return (config.get("method") or {}).get("split", "files")


def run_overrides(split: str, shots: int, seed: int, arm: str) -> list[str]:
    """Recipe command-line overrides of one run (k-shot data, k, seed, arm switches)."""
    args = ["--trainer.seed", str(seed), "--method.shots_per_class", str(shots),
            "--method.retroprompt.demo_topk", str(DEMO_TOPK.get(shots, min(8, shots)))]
    if split == "files":
        args += ["--method.train_path", f"sst2/k-shot/16-{seed}/train.jsonl"]  # 4-shot: the first 4 per class
    for switch, value in TRAINING_ARMS[arm].items():
        args += [f"--method.retroprompt.{switch}", value]
    return args


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0, as LM-BFF reports over its 5 seeds)."""
    if not values:
        raise ValueError("no values")
    return statistics.fmean(values), statistics.pstdev(values)


def summarise(results: dict[tuple[int, int, str], dict[str, Any]], shots: list[int], seeds: list[int]) -> dict[str, Any]:
    """Grid table from finished runs: {row: {shots: {"mean", "std", "n", "values"}}} in accuracy %.

    `results` maps (shots, seed, training arm) to that run's results.json `eval` dict.
    """
    table: dict[str, Any] = {}
    for row, (arm, field_name) in TABLE_ROWS.items():
        table[row] = {}
        for k in shots:
            values = [100.0 * results[(k, s, arm)][field_name] for s in seeds if (k, s, arm) in results]
            if values:
                mean, std = mean_std(values)
                table[row][k] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return table


def markdown(table: dict[str, Any], shots: list[int], seeds: list[int]) -> str:
    """The table as markdown: one row per arm, one column per k; "(n/N)" where seeds are missing."""
    lines = ["| arm | " + " | ".join(f"{k}-shot" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    for row, cells in table.items():
        rendered = []
        for k in shots:
            cell = cells.get(k)
            if cell is None:
                rendered.append("–")
                continue
            text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
            rendered.append(text if cell["n"] == len(seeds) else f"{text} ({cell['n']}/{len(seeds)})")
        lines.append(f"| {row} | " + " | ".join(rendered) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the missing runs of the grid (unless --summarise_only), then write and print the table."""
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", required=True, help="folder of the grid's runs and table")
    parser.add_argument("--shots", type=int, nargs="+", default=[16, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--arms", nargs="+", default=list(TRAINING_ARMS), choices=list(TRAINING_ARMS))
    parser.add_argument("--summarise_only", action="store_true", help="only tabulate the runs already finished")
    args = parser.parse_args(argv)
    clashing = [a for a in extra if a.split("=")[0] in GRID_KEYS]
    if clashing:
        parser.error(f"{', '.join(clashing)}: set by the grid for each run; use --seeds/--shots/--arms/--root")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")
    split = task_split(args.config)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    runs = [(k, s, a) for k in args.shots for s in args.seeds for a in args.arms]
    failed = []
    for i, (k, seed, arm) in enumerate(runs, 1):
        out = root / f"{k}shot-seed{seed}-{arm}"
        recipe_args = ["--config", args.config, "--trainer.output_dir", str(out), *run_overrides(split, k, seed, arm), *extra]
        if (out / "command.json").exists():
            earlier = json.loads((out / "command.json").read_text())["recipe_args"]
            if earlier != recipe_args:
                sys.exit(f"{out} was made by another command ({' '.join(earlier)}); use another --root")
        if (out / "results.json").exists() or args.summarise_only:
            continue
        cmd = [sys.executable, str(RECIPE), *recipe_args]
        print(f"[{i}/{len(runs)}] {' '.join(cmd)}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.json").write_text(json.dumps({"recipe_args": recipe_args}, indent=2))
        with open(out / "run.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            failed.append(str(out))
            print(f"  failed (exit {code}); see {out / 'run.log'}", flush=True)
    results = {}
    for k, seed, arm in runs:
        path = root / f"{k}shot-seed{seed}-{arm}" / "results.json"
        if path.exists():
            results[(k, seed, arm)] = json.loads(path.read_text())["eval"]
    table = summarise(results, args.shots, args.seeds)
    text = markdown(table, args.shots, args.seeds)
    (root / "grid.md").write_text(
        f"config: `{args.config}` (k-shot data: {split}), seeds {args.seeds}, overrides `{' '.join(extra)}`; "
        f"accuracy %, mean ± std (ddof 0)\n\n{text}\n"
    )
    (root / "grid.json").write_text(json.dumps({
        "config": args.config, "split": split, "seeds": args.seeds, "shots": args.shots, "overrides": extra,
        "table": {r: {str(k): c for k, c in cells.items()} for r, cells in table.items()},
    }, indent=2))
    print(text)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
