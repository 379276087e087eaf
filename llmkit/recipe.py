"""What every recipe entry script shares: the config sections, logging set-up, and the entry wrapper."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from llmkit.config import load_config, options_help, split_config_arg, wants_help
from llmkit.data.sft import DataConfig
from llmkit.models import ModelConfig
from llmkit.quiet import silence_known_warnings
from llmkit.train.trainer import TrainerConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"
ACCELERATE_CONFIGS_DIR = REPO_ROOT / "accelerate_configs"

C = TypeVar("C")


@dataclass
class RecipeConfig:
    """model + data + trainer sections; a recipe subclasses this and adds its `method` section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def setup_logging() -> None:
    """INFO logs on the main process, warnings elsewhere; quiet the noisiest libraries."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    silence_known_warnings()  # two warnings that every single-process run printed (llmkit/quiet.py)


def parse_recipe_args(cls: type[C], argv: list[str] | None = None) -> C:
    """`--config PATH` plus `--section.key value` overrides → a typed recipe config (`--help` lists the keys)."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(
            f"usage: {Path(sys.argv[0]).name} --config FILE [--section.key value ...]\n\nkeys (YAML or command line):"
        )
        print(options_help(cls))
        raise SystemExit(0)
    path, overrides = split_config_arg(argv)
    return load_config(cls, path, overrides)


# A recipe folder's entry script says what it does, and so which `llmkit` verb runs it: `train.py` trains
# (`llmkit train NAME`); `run.py` is an experiment with no training step, e.g. active prompting selects
# exemplars and evaluates (`llmkit run NAME`). Both take `--config FILE [--section.key value ...]`.
RECIPE_VERBS = {"train": "train.py", "run": "run.py"}


def list_recipes(verb: str = "train") -> dict[str, list[str]]:
    """Recipe name → its config files (relative to the repo root), for the recipes that `verb` runs."""
    entry = RECIPE_VERBS[verb]
    out = {}
    if RECIPES_DIR.is_dir():
        for recipe in sorted(p for p in RECIPES_DIR.iterdir() if (p / entry).is_file()):
            out[recipe.name] = sorted(str(c.relative_to(REPO_ROOT)) for c in (recipe / "configs").glob("*.yaml"))
    return out


def recipe_verb(name: str) -> str | None:
    """The verb that runs recipe folder `name` (`train` first if it had both), None if it is not a recipe."""
    for verb, entry in RECIPE_VERBS.items():
        if (RECIPES_DIR / name / entry).is_file():
            return verb
    return None
