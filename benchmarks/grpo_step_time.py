"""GRPO step time: llmkit's GRPOTrainer vs TRL's GRPOTrainer on the same model, prompts and batch.

    python benchmarks/grpo_step_time.py                              # tiny random Llama, CPU
    python benchmarks/grpo_step_time.py --model smollm2-135m-instruct --steps 4

Both: hf generation (no vLLM), n completions per prompt, the same number of prompts per optimizer step,
one gradient step per rollout batch, β = 0 (no reference model), fp32 on CPU. Seconds per step exclude
the first (warm-up) step. Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def prompts(count: int):
    """Toy arithmetic chat prompts shared by both trainers."""
    from llmkit.rl.rewards import toy_arithmetic_prompts

    return toy_arithmetic_prompts(count, seed=0)


def run_llmkit(args) -> float:
    """Mean seconds per step of llmkit's GRPOTrainer."""
    from llmkit.models import ModelConfig, load_model_and_tokenizer
    from llmkit.rl.grpo import GRPOMethodConfig, GRPOTrainer
    from llmkit.rl.rewards import boxed_reward
    from llmkit.train import TrainerConfig

    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=args.model))
    times = []
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainerConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_batch_size=args.prompts,
            learning_rate=1e-5,
            lr_scheduler="constant",
            save_final_model=False,
        )
        trainer = GRPOTrainer(
            cfg,
            GRPOMethodConfig(
                num_generations=args.n,
                temperature=args.temperature,
                max_new_tokens=args.max_new_tokens,
                advantage="grpo",
                clip_high=0.2,
                loss_aggregation="seq-mean-token-mean",
            ),
            model,
            tokenizer,
            prompts(args.prompts * args.steps),
            boxed_reward,
        )
        original = trainer.step_batches

        def timed(step):
            times.append(time.time())
            return original(step)

        trainer.step_batches = timed
        trainer.train()
        times.append(time.time())
    return sum(b - a for a, b in zip(times[1:-1], times[2:])) / (len(times) - 2)


def run_trl(args) -> float:
    """Mean seconds per step of TRL's GRPOTrainer with matching settings."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from llmkit.models import ModelConfig, load_model_and_tokenizer
    from llmkit.rl.rewards import boxed_reward

    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=args.model))
    data = prompts(args.prompts * args.steps)
    dataset = Dataset.from_list([{"prompt": p["prompt"], "answer": p["answer"]} for p in data])

    def reward(completions, answer, **kwargs):
        return [
            boxed_reward(c[0]["content"] if isinstance(c, list) else c, {"answer": a})
            for c, a in zip(completions, answer)
        ]

    stamps = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.append(time.time())

        def on_train_end(self, *a, **k):
            stamps.append(time.time())

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts * args.n,
            num_generations=args.n,
            max_completion_length=args.max_new_tokens,
            max_steps=args.steps,
            learning_rate=1e-5,
            beta=0.0,
            loss_type="grpo",
            temperature=args.temperature,
            use_cpu=True,
            report_to=[],
            bf16=False,
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Stamp()],
        )
        trainer.train()
    return sum(b - a for a, b in zip(stamps[1:-1], stamps[2:])) / (len(stamps) - 2)


def main() -> None:
    """Time both trainers; print and append the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random-llama")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--temperature", type=float, default=0.6, help="sampling temperature (both score log-probs at it)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternate the two trainers this many times and take the median (other load on the machine hits both)",
    )
    parser.add_argument("--no_append", action="store_true")
    args = parser.parse_args()
    ours_all, theirs_all = [], []
    for _ in range(args.repeats):
        ours_all.append(run_llmkit(args))
        theirs_all.append(run_trl(args))
    ours, theirs = statistics.median(ours_all), statistics.median(theirs_all)
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    table = (
        "| trainer | s/step (median) | runs | × TRL |\n|---|---|---|---|\n"
        f"| llmkit GRPOTrainer | {ours:.2f} | {runs(ours_all)} | {ours / theirs:.2f} |\n"
        f"| TRL GRPOTrainer | {theirs:.2f} | {runs(theirs_all)} | 1.00 |"
    )
    print(table)
    if not args.no_append:
        section = (
            f"\n## GRPO step time vs TRL: {args.model}, {args.prompts} prompts × {args.n} completions, "
            f"{args.max_new_tokens} new tokens, T {args.temperature}\n\n- date: {dt.date.today().isoformat()}\n"
            f"- machine: CPU {platform.machine()} (2 cores, shared with other jobs), fp32, hf generation, "
            f"{torch.get_num_threads()} torch thread(s)\n- command: `python {' '.join(sys.argv)}`\n\n{table}\n"
        )
        with RESULTS.open("a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
