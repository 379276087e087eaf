"""Evaluation tasks by name."""

from __future__ import annotations

from llmkit.errors import ConfigError

TASK_NAMES = ("humaneval", "mbpp", "gsm8k", "scienceqa", "scienceqa-text", "scienceqa-nocaption", "safety", "safety-jailbreak")


def task_names() -> list[str]:
    """The names `get_task` accepts."""
    return list(TASK_NAMES)


def get_task(name: str, data_path: str | None = None, timeout_s: float = 10.0):
    """The task called `name` (optionally reading its problems from `data_path`)."""
    if name == "humaneval":
        from llmkit.evaluation.tasks.humaneval import HumanEval

        return HumanEval(data_path=data_path, timeout_s=timeout_s)
    if name == "mbpp":
        from llmkit.evaluation.tasks.mbpp import MBPP

        return MBPP(data_path=data_path, timeout_s=timeout_s)
    if name == "gsm8k":
        from llmkit.evaluation.tasks.gsm8k import GSM8K

        return GSM8K(data_path=data_path, timeout_s=timeout_s)
    if name in ("scienceqa", "scienceqa-text", "scienceqa-nocaption"):
        from llmkit.evaluation.tasks.scienceqa import ScienceQA

        return ScienceQA(data_path=data_path, use_caption=name != "scienceqa-nocaption", text_only=name == "scienceqa-text")
    if name in ("safety", "safety-jailbreak"):
        from llmkit.evaluation.tasks.safety import Safety

        return Safety(data_path=data_path, timeout_s=timeout_s, jailbreak=name == "safety-jailbreak")
    raise ConfigError(f"unknown task '{name}'; available: {', '.join(TASK_NAMES)}")
