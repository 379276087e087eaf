"""SATE: train the safety-aware LoRA twin of the base model on the shared trainer.

Rows: refusals for harmful train-split prompts (AdvBench + HarmBench), CodeAlpaca reference answers for
benign train-split prompts (llmkit.safety.sate). The rows are written to <output_dir>/sate_data.jsonl
(derived, under outputs/, never into the project) and trained with a response-only loss.

    python recipes/safethinker/train.py --config recipes/safethinker/configs/tiny_cpu.yaml
    python recipes/safethinker/train.py --config recipes/safethinker/configs/smollm2_sate.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from accelerate.utils import set_seed

from llmkit.config import to_dict
from llmkit.data import load_sft_data
from llmkit.errors import DataError, exit_on_user_error
from llmkit.models import load_model_and_tokenizer
from llmkit.recipe import RecipeConfig, parse_recipe_args, setup_logging
from llmkit.safety.data import balanced, load_all, split_prompts
from llmkit.safety.sate import sate_rows, write_jsonl
from llmkit.train import Trainer, build_accelerator

logger = logging.getLogger("recipes.safethinker")


@dataclass
class SafeThinkerMethodConfig:
    """How many train-split prompts of each harmful source and how many benign CodeAlpaca rows."""

    name: Literal["safethinker"] = "safethinker"
    harmful_per_source: int = 200
    benign_rows: int = 300
    seed: int = 0


@dataclass
class SafeThinkerConfig(RecipeConfig):
    """model (with lora) + data (only max_length etc.; the path is generated) + trainer + method."""

    method: SafeThinkerMethodConfig = field(default_factory=SafeThinkerMethodConfig)


def build_sate_file(method: SafeThinkerMethodConfig, out_dir: str | Path) -> Path:
    """Write the SATE rows (train split only) to out_dir/sate_data.jsonl and return its path."""
    import json

    from llmkit.data.loading import data_dir

    splits = split_prompts(load_all())
    harmful = balanced([p for p in splits["train"] if p.label == 1], method.harmful_per_source, method.seed)
    train_texts = {p.text for p in splits["train"] if p.source == "codealpaca"}
    rows = json.loads((Path(data_dir()) / "codealpaca/code_alpaca_2k.json").read_text(encoding="utf-8"))
    benign = []
    for row in rows:
        text = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
        if text in train_texts and row.get("output"):
            benign.append((text, row["output"]))
    benign = benign[: method.benign_rows]
    if not harmful or not benign:
        raise DataError("SATE data is empty: no harmful or benign train-split prompts found")
    logger.info("SATE rows: %d harmful (refusals), %d benign", len(harmful), len(benign))
    return write_jsonl(sate_rows(harmful, benign, method.seed), Path(out_dir) / "sate_data.jsonl")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Build the SATE data, train the LoRA twin, save it."""
    cfg = parse_recipe_args(SafeThinkerConfig, argv)
    setup_logging()
    set_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer)
    path = build_sate_file(cfg.method, cfg.trainer.output_dir)
    cfg.data.path = str(path.resolve())
    cfg.data.columns = {"prompt": "prompt", "response": "response"}
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    data = load_sft_data(cfg.data, tokenizer)
    logger.info("train examples: %d, eval examples: %d", len(data.train), len(data.eval))
    trainer = Trainer(
        cfg.trainer, model, tokenizer, data.train, data.eval, run_config=to_dict(cfg), accelerator=accelerator
    )
    result = trainer.train()
    if accelerator.is_main_process:
        print(f"done: {result}; SATE twin in {cfg.trainer.output_dir}")


if __name__ == "__main__":
    main()
