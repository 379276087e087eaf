"""Code data selection (CodeACT CDAS or distribution-consistent selection) + SFT with Dynamic Pack.

    accelerate launch recipes/code_selection/train.py --config recipes/code_selection/configs/smollm2_codealpaca.yaml
    python recipes/code_selection/train.py --config recipes/code_selection/configs/tiny_cpu.yaml

The loop, top to bottom: (1) select a subset of the pool named by `data` (main process; scores and
embeddings are cached, so a rerun or another method on the same pool reuses them); (2) tokenise the
subset; (3) train on the shared trainer, with `trainer.packing` = dynamic (the paper's Dynamic Pack),
padding_free or none. `method.select: false` trains on the whole pool (the full-data baseline).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from accelerate.utils import set_seed

from llmkit.config import to_dict
from llmkit.data import load_sft_data
from llmkit.data.loading import SOURCE_KEY, read_records
from llmkit.data.selection.run import SelectConfig, SelectionConfig, run_selection
from llmkit.errors import ConfigError, DataError, exit_on_user_error
from llmkit.io import atomic_write_text
from llmkit.models import load_model_and_tokenizer
from llmkit.recipe import RecipeConfig, parse_recipe_args, setup_logging
from llmkit.train import Trainer, build_accelerator

logger = logging.getLogger("recipes.code_selection")


@dataclass
class CodeSelectionMethodConfig:
    """Whether to select, and how (llmkit.data.selection; paper defaults)."""

    name: Literal["code_selection"] = "code_selection"
    select: bool = True
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    # after training, score the saved model with the harness (greedy): e.g. [humaneval, mbpp]
    eval_tasks: list[str] = field(default_factory=list)
    eval_backend: Literal["hf", "vllm"] = "hf"
    eval_max_new_tokens: int = 384
    eval_limit: int | None = None  # first N problems of each task (None: all)


@dataclass
class CodeSelectionConfig(RecipeConfig):
    """model + data (the pool) + trainer (with packing) + method (selection)."""

    method: CodeSelectionMethodConfig = field(default_factory=CodeSelectionMethodConfig)


def prepare_pool(cfg: CodeSelectionConfig, accelerator) -> tuple[Path, Path | None]:
    """Write the pool (and, with data.eval_fraction > 0, a held-out eval file) under output_dir/selection.

    The held-out rows are drawn before any selection, with data.split_seed, so every arm (full data,
    CDAS, random, ...) with the same data settings is evaluated on the same rows and never trains on them.
    """
    out = Path(cfg.trainer.output_dir) / "selection"
    pool, heldout = out / "pool.jsonl", out / "heldout.jsonl"
    if accelerator.is_main_process:
        records = read_records(cfg.data.path, cfg.data.split, cfg.data.format, max_rows=cfg.data.max_rows)
        if not records:
            raise DataError(f"{cfg.data.path}: the pool is empty")
        order = list(range(len(records)))
        random.Random(cfg.data.split_seed).shuffle(order)
        n_eval = int(round(cfg.data.eval_fraction * len(records)))
        held = set(order[:n_eval])
        out.mkdir(parents=True, exist_ok=True)
        for path, rows in (
            (pool, [r for i, r in enumerate(records) if i not in held]),
            (heldout, [r for i, r in enumerate(records) if i in held]),
        ):
            atomic_write_text(
                path, "".join(json.dumps({k: v for k, v in r.items() if k != SOURCE_KEY}) + "\n" for r in rows)
            )
        logger.info("pool: %d rows for training/selection, %d held out for evaluation", len(records) - n_eval, n_eval)
    accelerator.wait_for_everyone()
    return pool, (heldout if cfg.data.eval_fraction > 0 else None)


def selection_config(cfg: CodeSelectionConfig, pool: Path, output_dir: Path) -> SelectConfig:
    """The `llmkit select` config for this recipe: the pool file, IFD scored by `model`."""
    columns = cfg.data.columns
    if "prompt" not in columns or "response" not in columns:
        raise ConfigError("code selection needs data.columns with 'prompt' and 'response' (not 'messages')")
    as_list = lambda c: [c] if isinstance(c, str) else list(c)  # noqa: E731
    response = as_list(columns["response"])
    if len(response) != 1:
        raise ConfigError("code selection needs a single response column")
    return SelectConfig(
        **asdict(cfg.method.selection),
        data_path=str(pool),
        format="jsonl",
        instruction_column=as_list(columns["prompt"]),
        response_column=response[0],
        on_bad_row=cfg.data.on_bad_row,
        output_dir=str(output_dir),
        model=cfg.model,
    )


def select_subset(cfg: CodeSelectionConfig, pool: Path, accelerator) -> Path:
    """Run the selection once (main process) and return the subset file; reuse it if the settings match."""
    out = Path(cfg.trainer.output_dir) / "selection"
    sel = selection_config(cfg, pool, out)
    if accelerator.is_main_process:
        previous = out / "selection.json"
        same = previous.exists() and json.loads(previous.read_text()).get("config") == json.loads(
            json.dumps(asdict(sel))
        )
        if same and (out / "subset.jsonl").exists():
            logger.info("selection: reusing %s (same settings)", out / "subset.jsonl")
        else:
            summary = run_selection(sel)
            logger.info(
                "selection: %s kept %d of %d; coverage %s",
                sel.method,
                summary["selected"],
                summary["pool"],
                summary["coverage"],
            )
    accelerator.wait_for_everyone()
    return out / "subset.jsonl"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Select, tokenise, train, save; print where the outputs are."""
    cfg = parse_recipe_args(CodeSelectionConfig, argv)
    setup_logging()
    set_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer)

    pool, heldout = prepare_pool(cfg, accelerator)
    train_file = select_subset(cfg, pool, accelerator) if cfg.method.select else pool
    data_cfg = replace(
        cfg.data,
        path=str(train_file),
        format="jsonl",
        max_rows=None,
        eval_path=str(heldout) if heldout else cfg.data.eval_path,
        eval_fraction=0.0,
    )
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    data = load_sft_data(data_cfg, tokenizer)
    logger.info(
        "train examples: %d, eval examples: %d, skipped rows: %d, packing: %s",
        len(data.train),
        len(data.eval),
        data.bad_rows.count,
        cfg.trainer.packing,
    )

    trainer = Trainer(
        cfg.trainer, model, tokenizer, data.train, data.eval, run_config=to_dict(cfg), accelerator=accelerator
    )
    result = trainer.train()
    if accelerator.is_main_process:
        scores = evaluate_tasks(cfg)
        print(
            f"done: {result}{'; ' + scores if scores else ''}; subset (selection/), model, metrics.jsonl and README.md "
            f"are in {cfg.trainer.output_dir}"
        )


def evaluate_tasks(cfg: CodeSelectionConfig) -> str:
    """Greedy harness runs of the saved model on `method.eval_tasks`, into output_dir/eval-<task>/."""
    from llmkit.evaluation.harness import EvalConfig, clear_partial, run_eval
    from llmkit.evaluation.tasks import get_task
    from llmkit.generation import build_generator

    if not cfg.method.eval_tasks:
        return ""
    tasks = [get_task(name) for name in cfg.method.eval_tasks]  # an unknown task fails before any generation
    generator = build_generator(cfg.method.eval_backend, cfg.trainer.output_dir)
    lines = []
    for name, task in zip(cfg.method.eval_tasks, tasks):
        out = Path(cfg.trainer.output_dir) / f"eval-{name}"
        ecfg = EvalConfig(
            task=name,
            model=cfg.trainer.output_dir,
            backend=cfg.method.eval_backend,
            output_dir=str(out),
            limit=cfg.method.eval_limit,
            max_new_tokens=cfg.method.eval_max_new_tokens,
        )
        task.load(ecfg.limit)
        clear_partial(out)  # an interrupted evaluation here was of earlier weights: start it again
        results = run_eval(task, generator, ecfg)
        lines.append(f"{name} {results['metrics']}")
    return "; ".join(lines)


if __name__ == "__main__":
    main()
