"""The RetroPrompt ablation grid: arms × shots × seeds, one training run each, then mean ± std.

    # the issue's table on SST-2 (paper schedule from the config; hours per run on CPU, a GPU job)
    python recipes/retroprompt/grid.py --config recipes/retroprompt/configs/smollm2_sst2.yaml --root outputs/retro-grid
    # a shortened CPU schedule: any recipe override after `--` goes to every run
    python recipes/retroprompt/grid.py --config recipes/retroprompt/configs/smollm2_sst2.yaml \\
        --root outputs/retro-grid-cpu --seeds 13 21 42 --shots 16 \\
        -- --trainer.max_steps 40 --trainer.eval_steps 0 --method.eval_limit 300
    # ScienceQA subject task (the config's text-hash split: k-shot rows drawn per seed from the pool)
    python recipes/retroprompt/grid.py --config recipes/retroprompt/configs/smollm2_scienceqa_subject.yaml --root ...

Arms (the issue's table): plain prompt tuning; + neural demonstrations; + kNN-guided training; + kNN
inference (the plain run's kNN-interpolated accuracy: the same training, so no extra run); full RetroPrompt
(all three). Each run is `recipes/retroprompt/train.py` in its own process, in
`ROOT/<shots>shot-seed<seed>-<arm>/` with its command in `command.json`; a run whose results.json exists
and whose command is the same is not repeated, so an interrupted grid resumes (an unfinished run continues
from its last checkpoint, if it saved any; a run folder made by another command is an error: use another
--root). The table (`ROOT/grid.md`, `ROOT/grid.json`) reports
accuracy in %, mean ± standard deviation over the seeds that finished (population std, ddof 0, as
LM-BFF's `gather_result.py`, whose seeds and protocol the paper follows), with the count when some
are missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmkit.config import load_config, parse_overrides, resolve_key
from llmkit.errors import ConfigError
from llmkit.stats import mean_std

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


# Config keys the grid sets itself, per run; an override of one after `--` would contradict the run folders'
# names. `method.split` decides whether the grid sets train_path, so it comes from the config file only.
GRID_KEYS = (
    "trainer.seed",
    "trainer.output_dir",
    "trainer.resume",
    "method.shots_per_class",
    "method.train_path",
    "method.split",
    "method.retroprompt.demo_topk",
    "method.retroprompt.use_demonstrations",
    "method.retroprompt.knn_train",
    "method.retroprompt.knn_infer",
)
DEMO_TOPK = {16: 8, 4: 2}  # demonstration neighbours per class: 8 at 16-shot (the configs), 2 at 4-shot


def recipe_config_class() -> type:
    """The recipe's config dataclass (RetroPromptConfig), so the grid parses overrides as the recipe does."""
    name = "retroprompt_recipe"
    if name not in sys.modules:  # registered before it runs: dataclasses look their module up while it executes
        spec = importlib.util.spec_from_file_location(name, RECIPE)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].RetroPromptConfig


def check_overrides(config_cls: type, extra: list[str]) -> None:
    """Raise ConfigError when an override after `--` names a key the grid sets per run, in any spelling the
    recipe accepts (`--seed`, `--trainer.output-dir`, `--trainer.seed=5`), or is a second `--config`.
    (A misspelled key is caught when `main` loads every run's config, before the first run starts.)"""
    for key, _ in parse_overrides(extra):
        if key == "config":
            raise ConfigError("--config after `--`: give the recipe config once, as the grid's --config")
        path = ".".join(resolve_key(config_cls, key))
        if path in GRID_KEYS:
            raise ConfigError(
                f"--{key} (= --{path}) is set by the grid for each run; use --seeds/--shots/--arms/--root"
            )


def seeded_train_path(train_path: str, seed: int) -> str:
    """The config's LM-BFF k-shot file (`<dir>/<k>-<seed>/<file>`) with the seed replaced: SST-2's
    `sst2/k-shot/16-13/train.jsonl` → `sst2/k-shot/16-21/train.jsonl` for seed 21."""
    match = re.fullmatch(r"(.*?)(\d+)-\d+(/[^/]+)", train_path)
    if match is None:
        raise ConfigError(
            f"method.train_path {train_path!r} is not an LM-BFF k-shot file (<dir>/<k>-<seed>/<file>), "
            f"so the grid cannot pick each seed's split"
        )
    return f"{match.group(1)}{match.group(2)}-{seed}{match.group(3)}"


def run_overrides(split: str, shots: int, seed: int, arm: str, train_path: str | None = None) -> list[str]:
    """Recipe command-line overrides of one run (k-shot data, k, seed, arm switches).

    split "files": each seed has its own k-shot file, `train_path` with the seed replaced (4-shot takes the
    first 4 per class of the 16-shot file); "text_hash": the recipe draws k per class from its pool by seed.
    """
    args = [
        "--trainer.seed",
        str(seed),
        "--method.shots_per_class",
        str(shots),
        "--method.retroprompt.demo_topk",
        str(DEMO_TOPK.get(shots, min(8, shots))),
    ]
    if split == "files":
        if train_path is None:
            raise ValueError("split 'files' needs the config's train_path")
        args += ["--method.train_path", seeded_train_path(train_path, seed)]
    for switch, value in TRAINING_ARMS[arm].items():
        args += [f"--method.retroprompt.{switch}", value]
    return args


def same_command(earlier: list[str], now: list[str]) -> bool:
    """Whether two runs' recipe arguments are the same, reading the config and output paths as the files
    they name (`recipes/x.yaml` and `./recipes/x.yaml`, a relative and an absolute --root)."""

    def normalised(args: list[str]) -> list[str]:
        out = list(args)
        for i in range(len(out) - 1):
            if out[i] in ("--config", "--trainer.output_dir"):
                out[i + 1] = str(Path(out[i + 1]).resolve())
        return out

    return normalised(earlier) == normalised(now)


def summarise(
    results: dict[tuple[int, int, str], dict[str, Any]], shots: list[int], seeds: list[int]
) -> dict[str, Any]:
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
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")
    root = Path(args.root)
    runs = [(k, s, a) for k in args.shots for s in args.seeds for a in args.arms]
    commands = {}
    try:  # every run's configuration is checked as the recipe will load it, before the first one starts
        config_cls = recipe_config_class()
        check_overrides(config_cls, extra)
        method = load_config(config_cls, args.config, extra).method
        split = method.split
        for k, seed, arm in runs:
            out = root / f"{k}shot-seed{seed}-{arm}"
            overrides = [
                "--trainer.output_dir",
                str(out),
                *run_overrides(split, k, seed, arm, method.train_path),
                *extra,
            ]
            load_config(config_cls, args.config, overrides)
            commands[(k, seed, arm)] = ["--config", args.config, *overrides]
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    root.mkdir(parents=True, exist_ok=True)
    failed = []
    for i, (k, seed, arm) in enumerate(runs, 1):
        out = root / f"{k}shot-seed{seed}-{arm}"
        recipe_args = commands[(k, seed, arm)]
        if (out / "command.json").exists():
            earlier = json.loads((out / "command.json").read_text())["recipe_args"]
            if not same_command(earlier, recipe_args):
                sys.exit(f"{out} was made by another command ({' '.join(earlier)}); use another --root")
        if (out / "results.json").exists() or args.summarise_only:
            continue
        # --trainer.resume: an interrupted run continues from its last checkpoint (from step 0 when it saved none)
        cmd = [sys.executable, str(RECIPE), *recipe_args, "--trainer.resume", "true"]
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
    (root / "grid.json").write_text(
        json.dumps(
            {
                "config": args.config,
                "split": split,
                "seeds": args.seeds,
                "shots": args.shots,
                "overrides": extra,
                "table": {r: {str(k): c for k, c in cells.items()} for r, cells in table.items()},
            },
            indent=2,
        )
    )
    print(text)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
