"""The harness: a task turns problems into prompts and scores completions; `run_eval` writes one results format.

Outputs in `output_dir`: `results.json` (task, metrics, sampling settings, backend, seeds, timeouts,
versions, git hash, wall time), `samples.jsonl` (prompt, completions, per-sample verdict) and
`report.md`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmkit.generation.types import GenerationOutput, Generator, Prompt, SamplingParams


@dataclass
class Scored:
    """Scores of a run: task metrics plus a verdict (and detail) for every sample of every problem."""

    metrics: dict[str, float]
    verdicts: list[list[dict[str, Any]]]
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """An evaluation task: problems, prompts, default stop sequences, scoring."""

    name: str = "task"
    default_stop: list[str] = []

    @abstractmethod
    def load(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The problems (each a dict with an `id`)."""

    @abstractmethod
    def prompt(self, problem: dict[str, Any], chat: bool) -> Prompt:
        """The prompt of one problem: raw text (chat=False) or chat messages (chat=True)."""

    @abstractmethod
    def score(self, problems: list[dict[str, Any]], outputs: list[GenerationOutput], chat: bool, ks: list[int]) -> Scored:
        """Score every completion; metrics aggregate over problems."""

    def run_strategy(self, strategy: str, problems, generator: Generator, params: SamplingParams, cfg: "EvalConfig"):
        """(outputs, extra metrics, settings) of an inference strategy other than 'standard' (hook)."""
        from llmkit.errors import ConfigError

        raise ConfigError(f"task '{self.name}' supports only --strategy standard")


@dataclass
class EvalConfig:
    """`llmkit eval` settings."""

    task: str = "humaneval"
    model: str = "smollm2-135m-instruct"
    backend: Literal["hf", "vllm", "openai"] = "hf"
    base_url: str = "http://127.0.0.1:8000/v1"
    output_dir: str = "outputs/eval"
    data_path: str | None = None
    limit: int | None = None
    chat: bool = True
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 1234
    k: list[int] = field(default_factory=lambda: [1])
    strategy: Literal["standard", "self_consistency", "hgivr"] = "standard"
    hgivr_max_rounds: int = 10
    hgivr_consecutive: bool = False
    sc_samples: int = 3
    sc_temperature: float = 0.7
    batch_size: int = 8
    timeout_s: float = 10.0

    def __post_init__(self):
        if any(k > self.n for k in self.k):
            raise ValueError(f"pass@k needs k <= n: k={self.k}, n={self.n}")


def git_hash() -> str:
    """The repository's commit (with '+dirty' for local changes), or '-' outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or "-"
    except (OSError, subprocess.TimeoutExpired):
        return "-"


def run_eval(task: Task, generator: Generator, cfg: EvalConfig) -> dict[str, Any]:
    """Generate, score and write results.json / samples.jsonl / report.md; return the results dict."""
    from llmkit.env import package_versions

    started = time.time()
    problems = task.load(cfg.limit)
    prompts = [task.prompt(p, cfg.chat) for p in problems]
    params = SamplingParams(
        n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
        stop=[] if cfg.chat else list(task.default_stop), seed=cfg.seed,
    )
    strategy_metrics: dict[str, float] = {}
    strategy_settings: dict[str, Any] = {}
    if cfg.strategy == "standard":
        outputs = generator.generate(prompts, params)
    else:
        outputs, strategy_metrics, strategy_settings = task.run_strategy(cfg.strategy, problems, generator, params, cfg)
    gen_seconds = time.time() - started
    scored = task.score(problems, outputs, cfg.chat, cfg.k)
    scored.metrics.update(strategy_metrics)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "task": task.name,
        "metrics": scored.metrics,
        "num_problems": len(problems),
        "sampling": asdict(params),
        "chat_template": cfg.chat,
        "strategy": {"name": cfg.strategy, **strategy_settings},
        "generator": generator.describe(),
        "model": cfg.model,
        "timeout_s": cfg.timeout_s,
        # prompts the engine could not take (longer than its context): scored as failures, counted here
        "prompts_too_long": sum(1 for o in outputs if o.completions and o.completions[0].finish_reason == "prompt_too_long"),
        **scored.extra,
        "versions": package_versions(),
        "git": git_hash(),
        "generation_seconds": round(gen_seconds, 1),
        "wall_seconds": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["llmkit eval", *sys.argv[2:]]) if sys.argv[1:2] == ["eval"] else " ".join(sys.argv),
    }
    # Routed systems (e.g. `llmkit serve --safety safethinker`) return {system: {"route": ...}} per answer:
    # count how each system's router sent the problems, as `<system>_routes`.
    routed = sorted({k for o in outputs for k, v in o.metadata.items() if isinstance(v, dict) and "route" in v})
    for system in routed:
        routes = [o.metadata[system]["route"] for o in outputs if system in o.metadata]
        results[f"{system}_routes"] = {r: routes.count(r) for r in sorted(set(routes))}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with (out / "samples.jsonl").open("w") as fh:
        for problem, output, verdicts in zip(problems, outputs, scored.verdicts):
            fh.write(json.dumps({
                "id": problem["id"],
                "prompt": output.prompt_text,
                "completions": [
                    {"text": c.text, "finish_reason": c.finish_reason, **v} for c, v in zip(output.completions, verdicts)
                ],
                **({"metadata": output.metadata} if output.metadata else {}),
            }) + "\n")
    write_report(out, results, problems, outputs, scored)
    return results


def write_report(out: Path, results: dict[str, Any], problems, outputs, scored: Scored) -> Path:
    """A short markdown report: settings, metrics, and the first few failures."""
    lines = [f"# {results['task']}: {results['model']}", "",
             f"- backend: {results['generator']}", f"- chat template: {results['chat_template']}",
             f"- sampling: {results['sampling']}", f"- problems: {results['num_problems']}, wall time {results['wall_seconds']} s", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in results["metrics"].items()]
    failures = [(p, o, v) for p, o, v in zip(problems, outputs, scored.verdicts) if not v[0].get("passed", v[0].get("correct", False))]
    if failures:
        lines += ["", f"## First failures ({len(failures)} problems failed their first sample)", ""]
        for p, o, v in failures[:3]:
            lines += [f"### {p['id']}: {v[0].get('detail', '')}", "", "```", o.completions[0].text[:800], "```", ""]
    plot = write_group_plot(out, results)
    if plot is not None:
        lines[lines.index("| metric | value |") - 1 : lines.index("| metric | value |") - 1] = [f"![accuracy by group]({plot.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


GROUPS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")


def write_group_plot(out: Path, results: dict[str, Any]) -> Path | None:
    """Bar chart of accuracy by group (ScienceQA's breakdown) when the metrics have one."""
    metrics = results["metrics"]
    groups = [g for g in GROUPS if g in metrics]
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(groups, [metrics[g] for g in groups], color="#4C72B0")
    ax.axhline(metrics.get("accuracy", 0), color="gray", linestyle="--", label=f"overall {metrics.get('accuracy', 0):.1f}")
    for bar, g in zip(bars, groups):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"n={int(metrics.get('n_' + g, 0))}", ha="center", fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{results['task']}: {results['model']} ({results.get('strategy', {}).get('name', 'standard')})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / "accuracy_by_group.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
