"""`make demo` / `llmkit demo`: the product end to end on embedded defaults.

select → pack → train → merge → evaluate → serve → report, each stage through the command or function that
does that job everywhere else:

1. + 2. the `code_selection` recipe (`recipes/code_selection/train.py`, launched as `llmkit train` does): CDAS
   picks 40% of 80 CodeAlpaca rows (IFD by SmolLM2 itself, MiniLM embeddings; both cached under
   `<out>/cache` so a second demo skips them), then LoRA SFT of SmolLM2-135M-Instruct on the shared trainer
   with Dynamic Pack;
3. `export_merged` (= `llmkit export`) merges the adapter;
4. the evaluation harness (= `llmkit eval`) scores base and tuned model greedily on a HumanEval slice
   (pass@1), and the report pairs their verdicts problem by problem;
5. the project's OpenAI-compatible server (`llmkit/generation/server.py`, hf backend) serves the tuned model
   and answers one chat request;
6. `<out>/demo_report.md` embeds the loss and accuracy plots and says where every artefact is.

`--tiny` runs the same stages on a random 2-layer Llama and a handful of rows (the test uses it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import LlmkitError


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: the recipe config, its overrides, and the evaluation slice."""

    config: str
    overrides: tuple[str, ...]
    base_model: str
    eval_task: str
    eval_limit: int
    eval_max_new_tokens: int
    serve_max_tokens: int


FULL = DemoConfig(
    config="recipes/code_selection/configs/smollm2_codealpaca.yaml",
    overrides=(
        "--model.lora.r",
        "8",
        "--model.lora.alpha",
        "16",
        # IFD costs two forward passes per row (≈ 2 CPU-s a row at ≤ 128 tokens): 80 rows keep it near 2 CPU-min
        "--data.max_rows",
        "80",
        "--data.max_length",
        "256",
        "--method.selection.num_clusters",
        "4",
        "--method.selection.ifd_max_length",
        "128",
        "--method.eval_tasks",
        "[]",  # the demo scores base and tuned itself, with the same harness
        "--trainer.packing",
        "dynamic",
        "--trainer.packing_max_length",
        "512",
        "--trainer.max_steps",
        "8",
        "--trainer.per_device_batch_size",
        "4",
        "--trainer.gradient_accumulation_steps",
        "1",
        "--trainer.learning_rate",
        "1e-3",
        "--trainer.lr_scheduler",
        "constant",
        "--trainer.warmup_ratio",
        "0",
        "--trainer.logging_steps",
        "1",
        "--trainer.eval_steps",
        "4",
        "--trainer.save_steps",
        "4",
    ),
    base_model="smollm2-135m-instruct",
    eval_task="humaneval",
    eval_limit=4,
    eval_max_new_tokens=128,
    serve_max_tokens=64,
)

TINY = DemoConfig(
    config="recipes/code_selection/configs/tiny_cpu.yaml",
    overrides=(
        "--data.max_rows",
        "48",
        "--method.selection.num_clusters",
        "2",
        "--trainer.max_steps",
        "2",
        "--trainer.eval_steps",
        "1",
        "--trainer.save_steps",
        "2",
        "--method.eval_tasks",
        "[]",
    ),
    base_model="tiny-random-llama",
    eval_task="humaneval",
    eval_limit=2,
    eval_max_new_tokens=8,
    serve_max_tokens=4,
)


def stage(number: int, total: int, text: str) -> float:
    """Print the stage header now (so a long stage is never silent) and return its start time."""
    print(f"\n[{number}/{total}] {text}", flush=True)
    return time.monotonic()


def evaluate(model: str, settings: DemoConfig, output_dir: Path) -> dict:
    """One greedy harness run (what `llmkit eval` does) of `model` on the demo's slice; returns results.json."""
    from llmkit.evaluation.harness import EvalConfig, clear_partial, run_eval
    from llmkit.evaluation.tasks import get_task
    from llmkit.generation import build_generator

    cfg = EvalConfig(
        task=settings.eval_task,
        model=model,
        backend="hf",
        output_dir=str(output_dir),
        limit=settings.eval_limit,
        max_new_tokens=settings.eval_max_new_tokens,
    )
    task = get_task(cfg.task, cfg.data_path, cfg.timeout_s)
    task.load(cfg.limit)
    clear_partial(output_dir)  # a journal from an earlier demo was of other weights
    return run_eval(task, build_generator("hf", model, cfg.batch_size), cfg)


def paired_table(base_dir: Path, tuned_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Markdown rows pairing the base and tuned verdicts per problem, and the 2×2 counts."""

    def verdicts(folder: Path) -> dict[str, bool]:
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
        return {r["id"]: bool(r["completions"][0].get("passed")) for r in rows}

    base, tuned = verdicts(base_dir), verdicts(tuned_dir)
    counts = {"both": 0, "base only": 0, "tuned only": 0, "neither": 0}
    lines = ["| problem | base | tuned |", "|---|---|---|"]
    for pid in base:
        b, t = base[pid], tuned.get(pid, False)
        counts["both" if b and t else "base only" if b else "tuned only" if t else "neither"] += 1
        lines.append(f"| {pid} | {'pass' if b else 'fail'} | {'pass' if t else 'fail'} |")
    return lines, counts


def accuracy_plot(path: Path, base: float, tuned: float, task: str) -> Path:
    """A two-bar pass@1 chart (base vs tuned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["base", "tuned"], [base, tuned], color=["#999999", "#3366cc"])
    ax.set_ylim(0, max(0.1, base, tuned) * 1.2)
    ax.set_ylabel("pass@1")
    ax.set_title(f"{task} slice")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def ask_server(model_dir: Path, name: str, prompt: str, max_tokens: int) -> tuple[str, str]:
    """Serve `model_dir` on a free local port (hf backend), send one chat request; return (url, answer)."""
    from llmkit.generation import build_generator
    from llmkit.generation.server import GeneratorServer

    server = GeneratorServer(build_generator("hf", str(model_dir)), name, "127.0.0.1", 0).start()
    try:
        body = json.dumps(
            {
                "model": name,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
        ).encode()
        request = urllib.request.Request(server.url + "/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            answer = json.loads(reply.read())["choices"][0]["message"]["content"]
        return server.url, answer
    finally:
        server.stop()


def run_demo(output_dir: str = "outputs/demo", tiny: bool = False) -> Path:
    """Run the demo; write `<output_dir>/demo_report.md` and print where everything is."""
    from llmkit.launch import launch_command
    from llmkit.models import export_merged
    from llmkit.recipe import REPO_ROOT

    settings = TINY if tiny else FULL
    out = Path(output_dir).resolve()
    train_dir, merged_dir = out / "train", out / "merged"
    eval_base, eval_tuned = out / "eval-base", out / "eval-tuned"
    started, times = time.monotonic(), {}
    total = 5

    t = stage(1, total, "select (CDAS) + Dynamic Pack LoRA SFT: the code_selection recipe")
    args = [
        "--config",
        settings.config,
        *settings.overrides,
        "--trainer.output_dir",
        str(train_dir),
        "--trainer.overwrite_output_dir",
        "--method.selection.cache_dir",
        str(out / "cache"),
    ]
    cmd = launch_command("code_selection", None, None, args)
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=REPO_ROOT) != 0:
        raise LlmkitError("the select + train stage failed (see above)")
    times["select + train"] = time.monotonic() - t

    t = stage(2, total, f"merge the adapter into {merged_dir} (llmkit export)")
    export_merged(train_dir, merged_dir)
    times["merge"] = time.monotonic() - t

    t = stage(
        3, total, f"{settings.eval_task} (first {settings.eval_limit}, greedy) through the harness: base, then tuned"
    )
    base = evaluate(settings.base_model, settings, eval_base)
    tuned = evaluate(str(merged_dir), settings, eval_tuned)
    times["evaluate"] = time.monotonic() - t

    t = stage(4, total, "serve the tuned model (llmkit/generation/server.py, hf backend) and ask it once")
    question = "Write a Python function that returns the sum of a list of numbers."
    url, answer = ask_server(merged_dir, "demo-tuned", question, settings.serve_max_tokens)
    times["serve"] = time.monotonic() - t

    stage(5, total, "report")
    selection = (
        json.loads((train_dir / "selection" / "selection.json").read_text())
        if (train_dir / "selection" / "selection.json").exists()
        else {}
    )
    metrics = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [m for m in metrics if "eval_loss" in m]
    b1, t1 = base["metrics"].get("pass@1", 0.0), tuned["metrics"].get("pass@1", 0.0)
    acc_png = accuracy_plot(out / "pass_at_1.png", b1, t1, settings.eval_task)
    table, counts = paired_table(eval_base, eval_tuned)
    loss_png = train_dir / "training_loss.png"
    lines = [
        "# llmkit demo report",
        "",
        f"Wall time {time.monotonic() - started:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ".",
        "",
        "## 1. Selection (CDAS)",
        "",
        f"- selected {selection.get('selected', '?')} of {selection.get('pool', '?')} rows; "
        f"subset `{train_dir / 'selection' / 'subset.jsonl'}`, report `{train_dir / 'selection' / 'report.md'}`",
        f"- cached IFD scores and embeddings: `{out / 'cache'}` (a second demo reuses them)",
        "",
        "## 2. Training (SFT with Dynamic Pack; LoRA on SmolLM2)",
        "",
        "- eval loss (held-out rows): " + ", ".join(f"step {m['step']}: {m['eval_loss']:.4f}" for m in evals),
        f"- adapter, checkpoints, metrics.jsonl, model card: `{train_dir}`; merged model: `{merged_dir}`",
        "",
        f"![training loss]({os.path.relpath(loss_png, out)})",
        "",
        f"## 3. {settings.eval_task}, first {settings.eval_limit} problems, greedy",
        "",
        f"- pass@1 base {b1:.3f} → tuned {t1:.3f}; paired: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"- results.json / samples.jsonl / report.md: `{eval_base}`, `{eval_tuned}`",
        "",
        f"![pass@1]({os.path.relpath(acc_png, out)})",
        "",
        *table,
        "",
        "## 4. Serving",
        "",
        f"- `{url}/chat/completions` (model `demo-tuned`) was asked: {question}",
        "",
        "```text",
        answer.replace("```", "'''"),
        "```",
        "",
    ]
    report = out / "demo_report.md"
    report.write_text("\n".join(lines))
    print("\n".join(line for line in lines if line.startswith(("Wall", "- "))))
    print(f"demo done in {time.monotonic() - started:.0f} s; report: {report}")
    return report


if __name__ == "__main__":
    run_demo(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")
