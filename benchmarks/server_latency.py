"""Latency of `llmkit serve --safety`'s server (GeneratorServer) for short requests, alone and while a huge one runs.

    python benchmarks/server_latency.py                  # SmolLM2-135M-Instruct, hf backend
    python benchmarks/server_latency.py --model tiny     # the tiny random model (seconds, for a smoke run)

Two rounds of `--short` concurrent chat requests (greedy, `--short_tokens` new tokens each): first with the
server idle, then while one huge request (`--huge_tokens` new tokens × `--huge_n` samples, a long prompt) is
generating. Latency is measured by each client from sending to the complete reply. The server is a plain
HFGenerator behind GeneratorServer (SafeThinker adds a gateway pass per batch but schedules the same way).
Prints the table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def post(url: str, body: dict, timeout: float) -> tuple[int, float]:
    """(HTTP status, seconds until the whole reply arrived) of one POST; status 0 when the connection failed."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 else values[0]


def short_round(url: str, count: int, tokens: int, timeout: float) -> dict:
    """`count` concurrent short chat requests; their statuses and latencies."""
    bodies = [
        {"messages": [{"role": "user", "content": f"Name a colour. ({i})"}], "max_tokens": tokens, "temperature": 0}
        for i in range(count)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda b: post(url + "/chat/completions", b, timeout), bodies))
    latencies = [s for status, s in results if status == 200]
    return {
        "requests": count,
        "answered": len(latencies),
        "wall_s": time.perf_counter() - started,
        "p50": percentile(latencies, 0.5) if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) if latencies else float("nan"),
        "max": max(latencies, default=float("nan")),
    }


def build_generator(name: str, batch_size: int):
    """The hf generator for `name` ('smollm2' or 'tiny')."""
    from llmkit.generation.hf import HFGenerator
    from llmkit.models import ModelConfig, TinyModelConfig, build_tiny_model, load_model_and_tokenizer, load_tokenizer

    if name == "tiny":
        tok = load_tokenizer(ModelConfig(name="tiny-random-llama"))
        model = build_tiny_model(TinyModelConfig(seed=0), vocab_size=len(tok))
        return HFGenerator(model, tok, batch_size=batch_size, show_progress=False), "tiny-random-llama"
    model, tok = load_model_and_tokenizer(ModelConfig(dtype="float32"))
    return HFGenerator(model, tok, batch_size=batch_size, show_progress=False), "SmolLM2-135M-Instruct"


def run(args) -> tuple[list[dict], dict]:
    """Both rounds against one server; (rows, the huge request's record)."""
    from llmkit.generation.server import GeneratorServer

    generator, label = build_generator(args.model, args.batch_size)
    server = GeneratorServer(generator, "bench", port=0, max_batch=args.batch_size).start()
    try:
        post(server.url + "/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, 600)
        alone = short_round(server.url, args.short, args.short_tokens, args.timeout)
        huge_body = {
            "prompt": "Write a long story about the sea. " * args.huge_prompt_repeats,
            "max_tokens": args.huge_tokens,
            "n": args.huge_n,
            "temperature": 1.0,
            "seed": 0,
        }
        huge: dict = {}
        calls_before = len(server.batches)

        def send_huge():
            huge["status"], huge["seconds"] = post(server.url + "/completions", huge_body, 3600)

        thread = threading.Thread(target=send_huge)
        thread.start()
        while len(server.batches) == calls_before and thread.is_alive():  # wait until it is generating
            time.sleep(0.05)
        loaded = short_round(server.url, args.short, args.short_tokens, args.timeout)
        huge["running_throughout"] = thread.is_alive()
        thread.join()
    finally:
        server.stop()
    alone["scenario"], loaded["scenario"] = "server idle", "one huge request generating"
    huge.update(
        label=label,
        body={k: v for k, v in huge_body.items() if k != "prompt"},
        prompt_tokens=len(generator.tokenizer(huge_body["prompt"])["input_ids"]),
    )
    return [alone, loaded], huge


def main() -> None:
    """Run both rounds, print the table, append it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--short", type=int, default=100, help="concurrent short requests per round")
    parser.add_argument("--short_tokens", type=int, default=3)
    parser.add_argument("--huge_tokens", type=int, default=1024)
    parser.add_argument("--huge_n", type=int, default=4)
    parser.add_argument(
        "--huge_prompt_repeats", type=int, default=100, help="the huge prompt: a sentence this many times"
    )
    parser.add_argument("--batch_size", type=int, default=32, help="server max_batch and hf batch size")
    parser.add_argument("--timeout", type=float, default=600.0, help="client timeout per short request (s)")
    parser.add_argument("--no_append", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows, huge = run(args)
    lines = [
        "| scenario | short requests | answered | p50 s | p99 s | max s | round wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['answered']} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['max']:.2f} | {r['wall_s']:.1f} |"
        )
    table = "\n".join(lines)
    huge_line = (
        f"huge request: {huge['body']}, {huge['prompt_tokens']}-token prompt; HTTP {huge['status']} after "
        f"{huge['seconds']:.1f} s; still generating when the last short reply arrived: "
        f"{'yes' if huge['running_throughout'] else 'no'}"
    )
    print(table + "\n\n" + huge_line)
    if args.no_append:
        return
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    with RESULTS.open("a") as fh:
        fh.write(
            f"\n## Server latency under load: {args.short} concurrent short requests, {huge['label']} "
            f"(GeneratorServer, hf backend)\n\n- date: {date}\n"
            f"- machine: CPU {platform.machine()} ({os.cpu_count()} cores, shared; load average "
            f"{load_before[0]:.1f} at the start)\n- command: `python {' '.join(sys.argv)}`\n"
            f"- short requests: chat, greedy, max_tokens {args.short_tokens}; server max_batch {args.batch_size}, "
            f"default ServerLimits\n- {huge_line}\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
