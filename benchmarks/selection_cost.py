"""Cost of the selection stages as the pool grows: IFD scoring, embedding, K-means, centroid selection.

    python benchmarks/selection_cost.py                          # N = 2k, 8k, 32k (IFD: 2k, 4k, 8k)
    python benchmarks/selection_cost.py --ifd_sizes 500,1000,2000 --ifd_model smollm2-135m-instruct

The pool is CodeAlpaca-2k replicated to N, each copy's instruction tagged with its copy number so every
row is a distinct text (IFD caches by text and would otherwise score each pair once). Each (stage, N)
runs in its own process, so its peak RSS is its own. Defaults keep the whole run near 15 minutes on two
cores: IFD is scored by the tiny random Llama (the pipeline's cost shape: tokenisation, length-sorted
batches, chunked writes; the 135M model's own per-row cost is in the coverage benchmark), and the
centroid objective runs `--centroid_iterations` iterations with a fixed budget m, reported per iteration
and scaled to the paper's 300. Prints the table with each stage's fitted exponent (time ∝ N^b) and
appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")
STAGES = ["ifd", "embed", "kmeans", "centroids"]


def pool(n: int) -> tuple[list[str], list[str]]:
    """CodeAlpaca-2k replicated to n rows, instructions tagged with their copy number."""
    from llmkit.data.loading import read_records

    rows = [r for r in read_records("codealpaca/code_alpaca_2k.json") if r.get("instruction") and r.get("output")]
    instructions, responses = [], []
    for i in range(n):
        r = rows[i % len(rows)]
        tag = f" (copy {i // len(rows)})" if i >= len(rows) else ""
        instructions.append(f"{r['instruction']} {r.get('input') or ''}".strip() + tag)
        responses.append(r["output"])
    return instructions, responses


def worker(stage: str, n: int, args) -> dict:
    """Run one stage on an n-row pool; seconds exclude loading models and data."""
    import torch

    from llmkit.data.embeddings import embed_texts
    from llmkit.data.selection.methods import kmeans_clusters, nearest_unused, train_centroids

    instructions, responses = pool(n)
    rng = np.random.default_rng(0)
    extra = {}
    if stage == "ifd":
        from llmkit.data.selection.ifd import score_ifd
        from llmkit.models import ModelConfig, load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(ModelConfig(name=args.ifd_model))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            score_ifd(
                model, tokenizer, instructions, responses, Path(tmp) / "ifd.jsonl", max_length=1024, show_progress=False
            )
            seconds = time.perf_counter() - start
    elif stage == "embed":
        embed_texts(instructions[:8], show_progress=False)  # load the model outside the timing
        start = time.perf_counter()
        embed_texts(instructions, show_progress=False)
        seconds = time.perf_counter() - start
    else:
        # unit vectors of the embedder's width: the cost depends on N and the dimension, not on the values
        features = rng.standard_normal((n, 384)).astype(np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        start = time.perf_counter()
        if stage == "kmeans":
            kmeans_clusters(features, k=10)
            seconds = time.perf_counter() - start
        else:
            tensor = torch.from_numpy(features)
            train_centroids(tensor, args.budget, iterations=1)  # warm-up (allocator, Adam state) outside the timing
            start = time.perf_counter()
            centroids, _ = train_centroids(tensor, args.budget, iterations=args.centroid_iterations)
            trained = time.perf_counter() - start
            nearest_unused(tensor, centroids)
            assign = time.perf_counter() - start - trained
            seconds = trained / args.centroid_iterations * 300 + assign
            extra = {"s_per_iteration": trained / args.centroid_iterations}
    return {
        "stage": stage,
        "n": n,
        "seconds": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **extra,
    }


def main() -> None:
    """Each (stage, N) in a subprocess; print and append the table with fitted exponents."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--ifd_model", default="tiny-random-llama")
    parser.add_argument(
        "--ifd_sizes",
        default="2000,4000,8000",
        help="IFD runs a language model over every row: its own (smaller) sizes keep the run short",
    )
    parser.add_argument("--budget", type=int, default=800, help="m for the centroid stage (fixed across N)")
    parser.add_argument("--centroid_iterations", type=int, default=20)
    parser.add_argument("--worker", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--no_append", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print("RESULT" + json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    stages = args.stages.split(",")
    results = {}
    ifd_sizes = [int(s) for s in args.ifd_sizes.split(",")]
    stage_sizes = {stage: (ifd_sizes if stage == "ifd" else sizes) for stage in stages}
    for stage in stages:
        for n in stage_sizes[stage]:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                stage,
                str(n),
                "--ifd_model",
                args.ifd_model,
                "--budget",
                str(args.budget),
                "--centroid_iterations",
                str(args.centroid_iterations),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{stage} at N={n} failed:\n{proc.stderr[-2000:]}")
            results[stage, n] = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
            print(f"{stage} N={n}: {results[stage, n]['seconds']:.1f} s", flush=True)
    lines = ["| stage | N | seconds | peak RSS GiB | exponent b (time ∝ N^b) |", "|---|---|---|---|---|"]
    for stage in stages:
        ns = stage_sizes[stage]
        times = [results[stage, n]["seconds"] for n in ns]
        b = float(np.polyfit(np.log(ns), np.log(times), 1)[0]) if len(ns) > 1 else float("nan")
        for n in ns:
            lines.append(
                f"| {stage} | {n:,} | {results[stage, n]['seconds']:.1f} | {results[stage, n]['peak_rss_gib']:.2f} | "
                f"{b:.2f} |"
                if n == ns[-1]
                else f"| {stage} | {n:,} | {results[stage, n]['seconds']:.1f} | "
                f"{results[stage, n]['peak_rss_gib']:.2f} | |"
            )
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        with RESULTS.open("a") as fh:
            threads = os.environ.get("OMP_NUM_THREADS", "all")
            fh.write(
                f"\n## Selection cost vs pool size (CodeAlpaca-2k replicated)\n\n- date: "
                f"{dt.date.today().isoformat()}\n"
                f"- machine: CPU {platform.machine()} (2 cores; OMP_NUM_THREADS={threads})\n- command: `python "
                f"{' '.join(sys.argv)}`\n"
                f"- IFD by {args.ifd_model}, max length 1024; embeddings all-MiniLM-L6-v2; K-means k=10; centroids "
                f"m={args.budget}, {args.centroid_iterations} iterations timed and scaled to 300, plus the "
                f"nearest-unused "
                f"assignment\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
