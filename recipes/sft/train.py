"""Supervised fine-tuning (full or LoRA) with a response-only loss on the shared trainer.

accelerate launch recipes/sft/train.py --config recipes/sft/configs/smollm2_codealpaca.yaml
python recipes/sft/train.py --config recipes/sft/configs/tiny_cpu.yaml --trainer.max_steps 5
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from accelerate.utils import set_seed

from llmkit.config import to_dict
from llmkit.data import load_sft_data
from llmkit.errors import exit_on_user_error
from llmkit.models import load_model_and_tokenizer
from llmkit.recipe import RecipeConfig, parse_recipe_args, setup_logging
from llmkit.train import Trainer, build_accelerator

logger = logging.getLogger("recipes.sft")


@dataclass
class SFTMethodConfig:
    """SFT needs no settings beyond the shared sections; the section exists so every recipe has one."""

    name: Literal["sft"] = "sft"


@dataclass
class SFTConfig(RecipeConfig):
    """model + data + trainer + method."""

    method: SFTMethodConfig = field(default_factory=SFTMethodConfig)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Load the config, model and data, train, save; print where the outputs are."""
    cfg = parse_recipe_args(SFTConfig, argv)
    setup_logging()
    set_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer)  # first, so DeepSpeed ZeRO-3 can partition at load time

    model, tokenizer = load_model_and_tokenizer(cfg.model)
    data = load_sft_data(cfg.data, tokenizer)
    logger.info(
        "train examples: %d, eval examples: %d, skipped rows: %d", len(data.train), len(data.eval), data.bad_rows.count
    )

    trainer = Trainer(
        cfg.trainer, model, tokenizer, data.train, data.eval, run_config=to_dict(cfg), accelerator=accelerator
    )
    result = trainer.train()
    if accelerator.is_main_process:
        print(f"done: {result}; model, metrics.jsonl, training_loss.png and README.md are in {cfg.trainer.output_dir}")


if __name__ == "__main__":
    main()
