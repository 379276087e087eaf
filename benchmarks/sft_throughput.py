"""SFT throughput of the shared trainer: tokens/s, step time, padding, peak memory.

    python benchmarks/sft_throughput.py                       # SmolLM2 LoRA and full fine-tuning, CPU fp32
    python benchmarks/sft_throughput.py --modes lora --steps 20 --batch 8 --max_length 512   # GPU (bf16 auto)
    python benchmarks/sft_throughput.py --modes lora --packings none,dynamic,padding_free --batch 16 --max_length 1024
    # padding_free uses per-example attention on sdpa/eager models; padding_free_masked keeps the
    # model's block-diagonal mask over the whole row (TrainerConfig.padding_free_attention: model)
    python benchmarks/sft_throughput.py --modes lora --packings padding_free,padding_free_masked --batch 16

Prints a table and appends it to benchmarks/RESULTS.md with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """One line describing the hardware this ran on."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )


def run_mode(mode: str, packing: str, args, loss_chunk_tokens: int = 0) -> dict:
    """Train `args.steps` steps in one process with LoRA or full fine-tuning, the given packing and
    `trainer.loss_chunk_tokens` (0: the plain loss over the whole logits tensor)."""
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed

    from llmkit.data import DataConfig, load_sft_data
    from llmkit.models import LoraAdapterConfig, ModelConfig, load_model_and_tokenizer
    from llmkit.train import Trainer, TrainerConfig

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    set_seed(0)
    label = packing
    attention = "model" if packing == "padding_free_masked" else "per_example"
    packing = "padding_free" if packing == "padding_free_masked" else packing
    model_cfg = ModelConfig(
        name=args.model, lora=LoraAdapterConfig(r=16, alpha=32, dropout=0.0) if mode == "lora" else None
    )
    model, tokenizer = load_model_and_tokenizer(model_cfg)
    data = load_sft_data(
        DataConfig(
            path=args.data,
            columns={"prompt": ["instruction", "input"], "response": "output"},
            max_rows=args.rows,
            max_length=args.max_length,
        ),
        tokenizer,
    )
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainerConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_batch_size=args.batch,
            gradient_accumulation_steps=1,
            learning_rate=2e-4 if mode == "lora" else 2e-5,
            lr_scheduler="constant",
            save_final_model=False,
            packing=packing,
            packing_max_length=args.packing_max_length,
            padding_free_attention=attention,
            # packing: random micro-batches as in the paper; otherwise the trainer's default length grouping
            group_by_length=packing == "none" and not args.no_group_by_length,
            loss_chunk_tokens=loss_chunk_tokens,
        )
        trainer = Trainer(cfg, model, tokenizer, data.train)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.time()
        trainer.train()
        wall = time.time() - started
    rows = [r for r in trainer.history if "loss" in r][1:]  # the first step is warm-up
    seconds = sum(r["num_tokens"] / r["target_tokens_per_s"] for r in rows)
    peak = (
        (torch.cuda.max_memory_allocated() / 2**30)
        if torch.cuda.is_available()
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "mode": mode,
        "packing": label,
        "attention": model.config._attn_implementation if packing == "padding_free" else "sdpa",
        "group_by_length": cfg.group_by_length,
        "loss_chunk_tokens": loss_chunk_tokens,
        "examples_per_row": sum(r["examples_per_row"] for r in rows) / len(rows),
        "trainable_params_M": trainable / 1e6,
        "step_s": seconds / len(rows),
        "input_tok_s": sum(r["input_tokens"] for r in rows) / seconds,
        "target_tok_s": sum(r["num_tokens"] for r in rows) / seconds,
        "padding": sum(r["padding_fraction"] for r in rows) / len(rows),
        "peak_GiB": peak,
        "final_loss": rows[-1]["loss"],
        "wall_s": wall,
        "precision": trainer.accelerator.mixed_precision,
    }


def main() -> None:
    """Parse arguments, run each mode, print the table and append it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="codealpaca/code_alpaca_2k.json")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument(
        "--packings",
        default="none",
        help="comma list of none, dynamic, padding_free, padding_free_masked (block-diagonal mask)",
    )
    parser.add_argument("--packing_max_length", type=int, default=2048)
    parser.add_argument(
        "--loss_chunk_tokens",
        default="0",
        help="comma list of trainer.loss_chunk_tokens values to run each arm with (0: the plain loss)",
    )
    parser.add_argument("--no_group_by_length", action="store_true", help="packing none: random micro-batches")
    parser.add_argument("--no_append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--single_mode", help=argparse.SUPPRESS)  # internal: one mode, JSON to stdout
    args = parser.parse_args()

    if args.single_mode:
        mode, packing, chunk = args.single_mode.split(":")
        print("RESULT " + json.dumps(run_mode(mode, packing, args, int(chunk))))
        return
    results = []
    for mode in args.modes.split(","):
        for packing in args.packings.split(","):
            for chunk in args.loss_chunk_tokens.split(","):
                # One process per run, so peak memory is that run's own.
                cmd = [sys.executable, __file__, *sys.argv[1:], "--single_mode", f"{mode}:{packing}:{chunk}"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{mode}/{packing}/loss chunk {chunk} failed:\n{proc.stderr[-3000:]}")
                results.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
    header = (
        "| mode | packing | attention | group by length | loss chunk | precision | trainable M | s/step | "
        "input tok/s | target tok/s | padding | "
        "examples/row | peak GiB | loss (last) | wall s |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['packing']} | {r.get('attention', 'sdpa')} | {r['group_by_length']} | "
            f"{r.get('loss_chunk_tokens') or 'off'} | "
            f"{r['precision']} | {r['trainable_params_M']:.2f} | "
            f"{r['step_s']:.2f} | {r['input_tok_s']:.0f} | {r['target_tok_s']:.0f} | {r['padding']:.1%} | "
            f"{r['examples_per_row']:.2f} | {r['peak_GiB']:.2f} | {r['final_loss']:.3f} | {r['wall_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        command = "python " + " ".join(sys.argv)
        section = (
            f"\n## SFT throughput: {args.model}, batch {args.batch}, max_length {args.max_length}, {args.steps} "
            f"steps\n\n"
            f"- date: {dt.date.today().isoformat()}\n- machine: {machine()}\n- command: `{command}`\n"
            f"- s/step and tok/s exclude the first (warm-up) step; peak is max RSS on CPU, max allocated on "
            f"GPU\n\n{table}\n"
        )
        with RESULTS.open("a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
