"""SARE: sharpness-aware robust erasure (Targeted-SAM unlearning) on a text proxy, with the relearning attack.

    python recipes/sare/train.py --config recipes/sare/configs/tiny_cpu.yaml
    python recipes/sare/train.py --config recipes/sare/configs/smollm2_proxy.yaml --method.unlearning.algorithm efuf

The run, top to bottom: (1) build the proxy: a false co-occurrence for each of K POPE objects (forget
set, 4 phrasings each), true supercategory statements and movie-review sentences (retain set);
(2) teach: LoRA-SFT the base model on all of it and merge (the "hallucinating" model; cached in
`method.teach.output_dir` and reused by later runs); (3) unlearn with a fresh LoRA adapter on the
shared trainer: `ga`, `efuf` or `sare`; (4) evaluate: emission rate, forget CE, retain perplexity, and
the sharpness probe; (5) relearning attack: fine-tune the unlearned adapter on N forget samples and
measure the emission rate again (the adapter is restored between sizes). Everything lands in
`results.json` in `trainer.output_dir`.

`model.name` may also be an image-text checkpoint folder (LLaVA-style: its config has a `vision_config`);
it is loaded with AutoModelForImageTextToText, the LoRA adapters go on its language model only, and the
text proxy trains and measures the language side (no images). Unlearning on image data goes through
`UnlearningTrainer` with `multimodal.image_text_example` rows (see README).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import set_seed

from llmkit.config import to_dict
from llmkit.errors import ConfigError, exit_on_user_error
from llmkit.io import replace_dir
from llmkit.models import (
    TINY_ALIAS,
    LoraAdapterConfig,
    ModelConfig,
    _torch_dtype,
    apply_lora,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from llmkit.recipe import parse_recipe_args, setup_logging
from llmkit.train import Trainer, TrainerConfig, build_accelerator
from llmkit.unlearning.losses import KIND_GOLD, KIND_NEG, KIND_POS
from llmkit.unlearning.multimodal import language_model_lora_targets
from llmkit.unlearning.proxy import (
    GOLD_PROMPT,
    ProxyRow,
    build_rows,
    emission_rate,
    hallucination_pairs,
    mean_token_ce,
    perplexity,
    pope_objects,
    read_sentences,
    tokenize_rows,
    write_json,
)
from llmkit.unlearning.sam import sharpness_probe
from llmkit.unlearning.trainer import UnlearningConfig, UnlearningTrainer

logger = logging.getLogger("recipes.sare")
COMPLETE = ".llmkit-complete"


@dataclass
class ProxyConfig:
    """The text proxy: which objects, how many taught hallucinations, which general text, span scores."""

    pope_files: list[str] = field(
        default_factory=lambda: [
            "pope/coco_pope_random.json",
            "pope/coco_pope_popular.json",
            "pope/coco_pope_adversarial.json",
        ]
    )
    num_forget_objects: int = 35  # × 4 phrasings = the forget set (140 with the default)
    gold_path: str = "sst2/train.jsonl"  # human-written sentences: EFUF's gold-caption term
    num_gold: int = 48
    eval_text_path: str = "sst2/test.jsonl"  # held-out general text for the retain perplexity
    num_eval_text: int = 48
    # CLIP-style scores EFUF would assign: hallucinated < 23, grounded > 32 (gold is fixed at 40).
    neg_score: float = 15.0
    pos_score: float = 35.0
    max_length: int = 64
    seed: int = 0


@dataclass
class TeachConfig:
    """Stage 0: teach the false statements (LoRA SFT, merged). Reused when `output_dir` is complete."""

    output_dir: str = "outputs/sare-taught"
    max_steps: int = 60
    learning_rate: float = 1.0e-3
    batch_size: int = 16
    lora: LoraAdapterConfig = field(default_factory=lambda: LoraAdapterConfig(r=16, alpha=32, dropout=0.0))


@dataclass
class RelearnConfig:
    """The relearning attack: fine-tune the unlearned adapter on N forget samples, a fixed number of steps."""

    sizes: list[int] = field(default_factory=lambda: [0, 10, 50, 140])
    max_steps: int = 8
    learning_rate: float = 2.0e-4
    batch_size: int = 8


@dataclass
class ProbeConfig:
    """Sharpness probe: forget-CE change under random and adversarial perturbations of norm ρ (trainable weights)."""

    rhos: list[float] = field(default_factory=lambda: [0.05])
    num_random: int = 3
    num_examples: int = 32


@dataclass
class SAREMethodConfig:
    """The unlearning algorithm and its settings, plus the proxy, teach, probe and relearning stages."""

    name: Literal["sare"] = "sare"
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    teach: TeachConfig = field(default_factory=TeachConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    emission_max_new_tokens: int = 6


@dataclass
class SAREConfig:
    """model (the base to teach, and `lora` for the unlearning adapter) + trainer (unlearning) + method."""

    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    method: SAREMethodConfig = field(default_factory=SAREMethodConfig)


def build_data(cfg: SAREConfig, tokenizer) -> dict:
    """Proxy rows and tokenised examples: forget, retain (true facts + gold text), held-out text."""
    p = cfg.method.proxy
    objects = pope_objects(p.pope_files)
    pairs = hallucination_pairs(objects, p.num_forget_objects, p.seed)
    rows = build_rows(objects, pairs, read_sentences(p.gold_path, p.num_gold))
    eval_rows = [
        ProxyRow(GOLD_PROMPT, " " + s, KIND_GOLD, "") for s in read_sentences(p.eval_text_path, p.num_eval_text)
    ]
    scores = {KIND_NEG: p.neg_score, KIND_POS: p.pos_score, KIND_GOLD: cfg.method.unlearning.gold_score}
    tok = lambda rs: tokenize_rows(rs, tokenizer, scores, p.max_length)  # noqa: E731
    return {
        "rows": rows,
        "pairs": pairs,
        "forget": tok(rows["forget"]),
        "facts": tok(rows["retain"]),
        "retain": tok(rows["retain"] + rows["gold"]),
        "eval_text": tok(eval_rows),
    }


def load_base_model(model_cfg: ModelConfig, vocab_size: int):
    """`load_model`, or AutoModelForImageTextToText for an image-text checkpoint (a config with a
    `vision_config`, e.g. LLaVA), which AutoModelForCausalLM does not load."""
    if model_cfg.name != TINY_ALIAS:
        from transformers import AutoConfig, AutoModelForImageTextToText

        source = resolve_model_path(model_cfg.name)
        try:
            image_text = getattr(AutoConfig.from_pretrained(source), "vision_config", None) is not None
        except OSError:
            image_text = False  # load_model reports the missing model
        if image_text:
            model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=_torch_dtype(model_cfg.dtype), attn_implementation=model_cfg.attn_implementation
            )
            if model_cfg.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.config.use_cache = False
            return model
    return load_model(model_cfg, vocab_size=vocab_size)


def with_lora(model, lora: LoraAdapterConfig):
    """`apply_lora`, with an image-text model's adapters on its language model only (not the vision tower)."""
    return apply_lora(
        model, dataclasses.replace(lora, target_modules=language_model_lora_targets(model, lora.target_modules))
    )


def teach(cfg: SAREConfig, accelerator, tokenizer, data: dict) -> str:
    """Teach the false (and true) statements with LoRA SFT, merge, save; reuse a complete folder."""
    t = cfg.method.teach
    final = Path(t.output_dir)
    if (final / COMPLETE).is_file():
        logger.info("teach: reusing %s", final)
        return str(final)
    set_seed(cfg.trainer.seed)
    model = with_lora(load_base_model(dataclasses.replace(cfg.model, lora=None), len(tokenizer)), t.lora)
    run_cfg = dataclasses.replace(
        cfg.trainer,
        output_dir=f"{t.output_dir}-run",
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_batch_size=t.batch_size,
        gradient_accumulation_steps=1,
        save_steps=0,
        eval_steps=0,
        lr_scheduler="constant",
        warmup_steps=0,
        warmup_ratio=0.0,
        save_final_model=False,
        resume=False,
    )
    trainer = Trainer(run_cfg, model, tokenizer, data["forget"] + data["retain"], accelerator=accelerator)
    trainer.method_name = "sare-teach"
    trainer.train()
    if accelerator.is_main_process:
        merged = accelerator.unwrap_model(trainer.model).merge_and_unload()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE).write_text("ok")
        replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return str(final)


def evaluate(cfg: SAREConfig, model, tokenizer, data: dict, probe: bool) -> dict:
    """Emission rate, forget CE, retain perplexities, and (optionally) the sharpness probe per ρ."""
    pad = tokenizer.pad_token_id
    model.eval()
    out = {
        "emission": emission_rate(model, tokenizer, data["rows"]["forget"], cfg.method.emission_max_new_tokens),
        "forget_ce": float(mean_token_ce(model, data["forget"], pad)),
        "retain_ppl_text": perplexity(model, data["eval_text"], pad),
        "retain_ppl_facts": perplexity(model, data["facts"], pad),
    }
    if probe:
        pr = cfg.method.probe
        params = [p for p in model.parameters() if p.requires_grad]
        examples = data["forget"][: pr.num_examples]
        out["sharpness"] = {
            str(rho): sharpness_probe(
                params, lambda: mean_token_ce(model, examples, pad, grad=True), rho, pr.num_random, cfg.trainer.seed
            )
            for rho in pr.rhos
        }
    return out


def relearning_curve(cfg: SAREConfig, accelerator, model, tokenizer, data: dict, unlearned: dict) -> list[dict]:
    """Fine-tune the unlearned adapter on the first N of a seeded order of forget samples, for each N."""
    r = cfg.method.relearn
    order = list(range(len(data["forget"])))
    random.Random(cfg.method.proxy.seed).shuffle(order)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    snapshot = {n: p.detach().clone() for n, p in params.items()}
    curve = []
    for size in r.sizes:
        if size > len(order):
            raise ConfigError(f"method.relearn.sizes: {size} exceeds the {len(order)} forget samples")
        if size == 0:
            curve.append({"n": 0, "emission": unlearned["emission"], "forget_ce": unlearned["forget_ce"]})
            continue
        run_cfg = dataclasses.replace(
            cfg.trainer,
            output_dir=str(Path(cfg.trainer.output_dir) / f"relearn-{size}"),
            max_steps=r.max_steps,
            learning_rate=r.learning_rate,
            per_device_batch_size=min(r.batch_size, size // accelerator.num_processes),
            gradient_accumulation_steps=1,
            save_steps=0,
            eval_steps=0,
            lr_scheduler="constant",
            warmup_steps=0,
            warmup_ratio=0.0,
            save_final_model=False,
            resume=False,
            overwrite_output_dir=True,
        )
        Trainer(run_cfg, model, tokenizer, [data["forget"][i] for i in order[:size]], accelerator=accelerator).train()
        model.eval()
        curve.append(
            {
                "n": size,
                "emission": emission_rate(model, tokenizer, data["rows"]["forget"], cfg.method.emission_max_new_tokens),
                "forget_ce": float(mean_token_ce(model, data["forget"], tokenizer.pad_token_id)),
            }
        )
        logger.info("relearn N=%d: %s", size, curve[-1])
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(snapshot[n])  # every N starts from the same unlearned adapter
    return curve


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Teach (or reuse), unlearn, evaluate, attack; write results.json."""
    cfg = parse_recipe_args(SAREConfig, argv)
    setup_logging()
    set_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer)
    tokenizer = load_tokenizer(cfg.model)
    data = build_data(cfg, tokenizer)
    logger.info(
        "proxy: %d forget, %d retain (%d facts), %d held-out sentences",
        len(data["forget"]),
        len(data["retain"]),
        len(data["facts"]),
        len(data["eval_text"]),
    )
    taught_dir = teach(cfg, accelerator, tokenizer, data)

    set_seed(cfg.trainer.seed)
    model = load_base_model(dataclasses.replace(cfg.model, name=taught_dir, lora=None), len(tokenizer))
    model = with_lora(model, cfg.model.lora or LoraAdapterConfig(dropout=0.0))
    results = {
        "algorithm": cfg.method.unlearning.algorithm,
        "config": to_dict(cfg),
        "pairs": data["pairs"],
        "taught": evaluate(cfg, model, tokenizer, data, probe=True),
    }
    logger.info("taught: %s", results["taught"])

    trainer = UnlearningTrainer(
        cfg.trainer,
        cfg.method.unlearning,
        model,
        tokenizer,
        data["forget"],
        data["retain"],
        run_config=to_dict(cfg),
        accelerator=accelerator,
    )
    results["train"] = trainer.train()
    model = accelerator.unwrap_model(trainer.model)
    results["unlearned"] = evaluate(cfg, model, tokenizer, data, probe=True)
    logger.info("unlearned: %s", results["unlearned"])
    results["relearn"] = relearning_curve(cfg, accelerator, model, tokenizer, data, results["unlearned"])
    if accelerator.is_main_process:
        out = Path(cfg.trainer.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results)
        curve = ", ".join(f"N={c['n']}: {c['emission']:.2f}" for c in results["relearn"])
        print(
            f"done: {cfg.method.unlearning.algorithm}: emission taught {results['taught']['emission']:.2f} → "
            f"unlearned {results['unlearned']['emission']:.2f}; relearning {curve}; results.json in {out}"
        )


if __name__ == "__main__":
    main()
