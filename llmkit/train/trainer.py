"""The shared trainer: one readable loop on `accelerate.Accelerator`, with hooks that methods override.

Loop (see `Trainer.train`)::

    for step in steps:
        micro_batches = step_batches(step)       # hook: this process's share of the step, collated/packed
        n = target tokens in the whole step, summed over every process
        training_step(micro_batches, n)          # hook: forward + backward on each micro-batch
        clip, optimizer.step, scheduler.step, zero_grad
        (a NaN/inf loss or gradient norm skips optimizer.step; past trainer.max_nonfinite_steps it stops)
        log / evaluate / checkpoint

Hooks: `step_batches` (the collated micro-batches of a step; SFT packs them, RL builds them from
rollouts), `compute_loss` (summed loss of one micro-batch), `training_step` (forward/backward over the
step's micro-batches), `method_state_dict` / `load_method_state_dict` (per-method state saved in
checkpoints) and `process_state_dict` / `load_process_state_dict` (each process's own share, e.g. a
rollout buffer that later optimizer steps reuse). The loss is normalised by the target tokens of the whole
optimizer step, so it does not depend on the micro-batch split or the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from llmkit.data.packing import (
    PACKING_MODES,
    PackingStats,
    check_packing_isolation,
    collate_examples,
    model_forward_inputs,
)
from llmkit.data.sft import IGNORE_INDEX, TokenizedExample, collate
from llmkit.errors import CheckpointError, ConfigError, TrainingError
from llmkit.io import atomic_write_json, atomic_write_text
from llmkit.quiet import silence_known_warnings
from llmkit.train import checkpoint as ckpt
from llmkit.train.batching import process_micro_batches, step_indices, steps_per_epoch
from llmkit.train.losses import (
    chunked_linear_cross_entropy_sum,
    count_target_tokens,
    step_normalised_loss,
    token_cross_entropy_sum,
)
from llmkit.train.packed_attention import resolve_padding_free_path, use_padding_free_attention
from llmkit.train.token_budget import TokenBudgetSchedule, process_rows

logger = logging.getLogger(__name__)

# Fault injection for the resume tests: kill this process (SIGKILL) after optimizer step k, or in the
# middle of writing checkpoint k (files written, not yet published).
FAULT_KILL_AFTER_STEP = "LLMKIT_FAULT_KILL_AFTER_STEP"
FAULT_KILL_IN_SAVE = "LLMKIT_FAULT_KILL_IN_SAVE"


@dataclass
class TrainerConfig:
    """Optimisation, logging and checkpointing settings of the shared trainer."""

    output_dir: str = "outputs/run"
    seed: int = 42
    num_epochs: int = 1
    max_steps: int = -1
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    shuffle: bool = True
    group_by_length: bool = True
    # How a micro-batch becomes tensors (llmkit.data.packing): one example per row, CodeACT's Dynamic
    # Pack (faithful: examples in a row see each other), or padding-free (examples isolated).
    packing: Literal["none", "dynamic", "padding_free"] = "none"
    packing_max_length: int = 2048
    # padding_free with sdpa: how the packed row's examples are kept apart (llmkit.train.packed_attention).
    # `auto`: on CUDA flash-attn if installed, else torch's varlen_attn, else flex attention; elsewhere
    # `per_example` (SDPA on each example's slice, Σ Lᵢ² work). `varlen` / `flex` / `flash` force one path;
    # `model` keeps transformers' block-diagonal mask over the whole row ((Σ Lᵢ)² work).
    padding_free_attention: Literal["auto", "per_example", "varlen", "flex", "flash", "model"] = "auto"
    # Token-budget batches (llmkit.train.token_budget), 0 = off: each epoch's examples are packed into rows of at
    # most packing_max_length tokens by best-fit decreasing over the whole shuffled dataset, and each optimizer
    # step takes rows up to this many tokens, one row per micro-batch (per_device_batch_size and
    # gradient_accumulation_steps then do not shape the step). Needs packing padding_free (or dynamic).
    max_tokens_per_step: int = 0
    # Wrap the model with torch.compile (compiled on the first steps; worth it on GPU for long runs).
    compile: bool = False
    # Chunked output head + loss (llmkit.train.losses.chunked_linear_cross_entropy_sum), 0 = off: the head runs
    # only on target tokens, this many at a time, and each chunk's logits are recomputed in the backward pass
    # instead of kept, so the [tokens, vocab] logits of a whole micro-batch never exist. Same loss; checked
    # against the plain loss at start.
    loss_chunk_tokens: int = 0
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_epsilon: float = 1e-8
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    logging_steps: int = 1
    eval_steps: int = 0
    eval_on_start: bool = False
    save_steps: int = 0
    save_total_limit: int = 2
    resume: bool = False
    overwrite_output_dir: bool = False
    report_to: list[str] = field(default_factory=list)
    save_final_model: bool = True
    # Consecutive optimizer steps with a non-finite loss or gradient norm that are skipped (weights left
    # unchanged) before the run stops; 0 stops at the first. A stopped run exits non-zero and publishes no model.
    max_nonfinite_steps: int = 0

    def __post_init__(self):
        for name in (
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "num_epochs",
            "logging_steps",
            "packing_max_length",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # -1 is the documented "train for num_epochs"; any other value below 1 is a typo, not a request.
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1, or -1 to train for num_epochs; got {self.max_steps}")
        for name in ("save_steps", "eval_steps", "warmup_steps", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: never), got {getattr(self, name)}")
        if self.max_tokens_per_step < 0:
            raise ValueError(f"max_tokens_per_step must be >= 0 (0: off), got {self.max_tokens_per_step}")
        if self.loss_chunk_tokens < 0:
            raise ValueError(f"loss_chunk_tokens must be >= 0 (0: off), got {self.loss_chunk_tokens}")
        if 0 < self.max_tokens_per_step < self.packing_max_length:
            # a packed row is one micro-batch and must fit in a step
            raise ValueError(
                f"max_tokens_per_step ({self.max_tokens_per_step}) must be at least packing_max_length "
                f"({self.packing_max_length}), the size of one packed row"
            )
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Optimizer settings must be finite and in range (torch would raise a traceback, or train on NaN)."""
        for name in ("learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm", "warmup_ratio"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.learning_rate < 0 or self.weight_decay < 0 or self.adam_epsilon < 0:
            name = next(n for n in ("learning_rate", "weight_decay", "adam_epsilon") if getattr(self, n) < 0)
            raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.adam_betas) != 2:
            raise ValueError("adam_betas must have two values")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be in [0, 1), got {self.adam_betas}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def resolve_mixed_precision(setting: str) -> str:
    """'auto' → bf16 on a GPU that supports it, else 'no' (fp32; bf16 is emulated on this CPU)."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_accelerator(cfg: TrainerConfig):
    """An Accelerator for `cfg`; on CPU the process group is gloo (DeepSpeed on CPU needs it too)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    # before anything imports DeepSpeed (Accelerator under ZeRO, unwrap_model in every run): see llmkit/quiet.py
    silence_known_warnings()
    handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    sharded = any(os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true" for name in ("DEEPSPEED", "FSDP"))
    accelerator = Accelerator(
        # Without CUDA, run on CPU even when launched with a multi-GPU config (gloo processes). Not under
        # DeepSpeed/FSDP: cpu=True would silently drop them; DeepSpeed finds the CPU via DS_ACCELERATOR=cpu.
        cpu=not torch.cuda.is_available() and not sharded,
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=cfg.report_to or None,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=cfg.output_dir),
        kwargs_handlers=handlers,
    )
    if accelerator.num_processes > 1 and accelerator.distributed_type.value == "NO":
        # accelerate can start several processes yet wrap nothing (e.g. FSDP without CUDA): gradients
        # would never be synchronised, so every process would train its own model. Refuse.
        fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        raise ConfigError(
            f"{accelerator.num_processes} processes were launched but accelerate set up no data parallelism"
            + (" (FSDP needs CUDA devices)" if fsdp else "")
            + "; on CPU use accelerate_configs/cpu_ddp.yaml, zero2.yaml or zero3.yaml"
        )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # We feed batches ourselves (no prepared dataloader), so fill DeepSpeed's "auto" fields here.
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
        ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        ds["train_batch_size"] = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
        ds["gradient_clipping"] = cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0
    return accelerator


def flatten_for_trackers(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → {"section.key": scalar}; trackers (TensorBoard hparams) accept only scalars."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_for_trackers(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def adamw_options(cuda: bool, deepspeed: bool) -> dict[str, Any]:
    """Extra AdamW arguments: the fused kernel on CUDA (one launch for all parameters instead of several per
    tensor); nothing elsewhere, so CPU numerics stay as they were. DeepSpeed manages its optimizer itself."""
    return {"fused": True} if cuda and not deepspeed else {}


# The hooks a token-budget step is made of. A subclass that overrides one builds or consumes its batches in its
# own way (rollouts, forget/retain pairs, a probe head on padded prompts), so packed rows may not fit it.
TOKEN_BUDGET_HOOKS = ("step_batches", "make_batch", "compute_loss", "training_step")


def check_packing(trainer: "Trainer", packing: str) -> None:
    """Refuse, in one ConfigError line, a `trainer.packing` mode that `trainer.supports_packing` does not list.

    Checked once, when the trainer starts: a method whose batches need one example per row (a label
    position, per-example terms, padded rollouts) says so in `supports_packing` instead of being fed packed
    rows it would silently misread.
    """
    if packing not in trainer.supports_packing:
        raise ConfigError(
            f"trainer.packing: {packing} is not supported by {type(trainer).__name__} (method "
            f"'{trainer.method_name}'); use {' or '.join(trainer.supports_packing)}"
        )


def supports_token_budget(cls: type) -> bool:
    """Whether trainer class `cls` can train on token-budget batches (`trainer.max_tokens_per_step`).

    A class says so with its own `supports_token_budget` attribute; otherwise the answer is yes only when it
    keeps the base class's batch hooks (`TOKEN_BUDGET_HOOKS`), so a subclass written before token budgets
    existed is refused instead of being fed rows it was not written for.
    """
    for klass in cls.__mro__:
        if klass is Trainer:
            break
        if "supports_token_budget" in vars(klass):
            return bool(vars(klass)["supports_token_budget"])
    return all(getattr(cls, hook) is getattr(Trainer, hook) for hook in TOKEN_BUDGET_HOOKS)


# The hooks that compute the training loss; a subclass that overrides one has a loss of its own, which
# trainer.loss_chunk_tokens would not reach.
LOSS_HOOKS = ("compute_loss", "training_step")


def chunked_loss_head(trainer: "Trainer", model) -> torch.nn.Linear:
    """The output head that `trainer.loss_chunk_tokens` applies itself, after refusing what it cannot serve.

    Refused in one ConfigError line: a trainer that overrides a `LOSS_HOOKS` hook (its loss is not the base
    next-token loss), an output head that is not a plain Linear (LoRA or modules_to_save on the head), and
    weights that are gathered only inside the model's forward (FSDP, DeepSpeed ZeRO-3). Then the chunked loss
    is compared with the plain loss on a short input: a model whose logits are more than its head over its
    last hidden state (a logit soft-cap, a scaled head) is refused instead of trained on another loss.
    """
    name = type(trainer).__name__
    own = [hook for hook in LOSS_HOOKS if getattr(type(trainer), hook) is not getattr(Trainer, hook)]
    if own:
        raise ConfigError(
            f"trainer.loss_chunk_tokens is not supported by {name} (method '{trainer.method_name}' computes its "
            f"own loss: it overrides {', '.join(own)}); set trainer.loss_chunk_tokens: 0"
        )
    acc = trainer.accelerator
    sharded = acc.distributed_type.value == "FSDP" or (
        acc.distributed_type.value == "DEEPSPEED" and acc.state.deepspeed_plugin.zero_stage == 3
    )
    if sharded:
        raise ConfigError(
            "trainer.loss_chunk_tokens uses the output head's weight outside the model's forward, where FSDP and "
            "DeepSpeed ZeRO-3 keep it sharded; set trainer.loss_chunk_tokens: 0 (or use DDP / ZeRO-2)"
        )
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise ConfigError(
            f"trainer.loss_chunk_tokens needs a plain Linear output head, this model's is {type(head).__name__} "
            "(an adapter or modules_to_save on lm_head?); set trainer.loss_chunk_tokens: 0"
        )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ids = torch.arange(1, 17, device=head.weight.device).unsqueeze(0) % head.out_features
        labels = ids.clone()
        labels[:, :4] = IGNORE_INDEX
        plain, n = token_cross_entropy_sum(model(input_ids=ids, use_cache=False).logits, labels)
        chunked, _ = chunked_head_loss(model, head, {"input_ids": ids, "labels": labels}, 5)
    model.train(was_training)
    gap = abs(float(plain) - float(chunked)) / max(int(n), 1)
    if not gap < 1e-3:
        raise ConfigError(
            f"trainer.loss_chunk_tokens: this model's logits are not its output head over its last hidden state "
            f"(mean loss gap {gap:.3g}); set trainer.loss_chunk_tokens: 0"
        )
    chunk = trainer.cfg.loss_chunk_tokens
    logger.info("trainer.loss_chunk_tokens %d: chunked and plain loss agree (gap %.2e)", chunk, gap)
    return head


def chunked_head_loss(model, head: torch.nn.Linear, batch: dict[str, torch.Tensor], chunk_tokens: int):
    """(loss_sum, target tokens) of one batch with the output head applied by `chunked_linear_cross_entropy_sum`.

    The model runs its own forward (wrappers, autocast and hooks stay in place) with `logits_to_keep` set to
    no position, so it computes no logits, and returns its last hidden state (after the final norm).
    """
    none = torch.zeros(0, dtype=torch.long, device=batch["input_ids"].device)
    outputs = model(**model_forward_inputs(batch), logits_to_keep=none, output_hidden_states=True)
    return chunked_linear_cross_entropy_sum(
        outputs.hidden_states[-1], head.weight, batch["labels"], chunk_tokens, head.bias
    )


@contextlib.contextmanager
def _unreadable_checkpoint(path: Path):
    """Turn a failure to read a checkpoint's files into one CheckpointError line naming the folder.

    Checksums catch damage to checkpoints that have them; this covers older checkpoints without a
    manifest (a truncated or missing file) and files that do not fit this model (wrong keys or shapes).
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot load checkpoint {path}: {exc.__class__.__name__}: {detail}") from exc


class Trainer:
    """Train `model` on tokenised examples with accelerate; subclass and override the hooks for a method."""

    method_name = "sft"
    # The base hooks train on token-budget rows; see `supports_token_budget` for subclasses.
    supports_token_budget = True
    # The trainer.packing modes make_batch can serve (checked at start by `check_packing`); the base
    # collators serve every mode.
    supports_packing: tuple[str, ...] = PACKING_MODES

    def __init__(
        self,
        cfg: TrainerConfig,
        model,
        tokenizer,
        train_data: list[TokenizedExample],
        eval_data: list[TokenizedExample] | None = None,
        run_config: dict[str, Any] | None = None,
        accelerator=None,
    ):
        check_packing(self, cfg.packing)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.train_data = train_data
        self.eval_data = eval_data or []
        self.run_config = run_config or {}
        self.accelerator = accelerator or build_accelerator(cfg)
        self.output_dir = Path(cfg.output_dir)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []

        acc = self.accelerator
        self.world_size = acc.num_processes
        self.global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * self.world_size
        self.token_budget = self._token_budget_schedule()  # None unless trainer.max_tokens_per_step
        if self.token_budget is not None:
            self.steps_per_epoch = self.token_budget.steps_in_epoch(0)
        else:
            self.steps_per_epoch = steps_per_epoch(len(train_data), self.global_batch)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the global batch ({self.global_batch} = {cfg.per_device_batch_size} per device × "
                f"{cfg.gradient_accumulation_steps} accumulation × {self.world_size} processes) is larger than "
                f"the training set ({len(train_data)} examples)"
            )
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else self.steps_for_epochs(cfg.num_epochs)

        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
            betas=tuple(cfg.adam_betas),
            eps=cfg.adam_epsilon,
            **adamw_options(torch.cuda.is_available(), acc.distributed_type.value == "DEEPSPEED"),
        )
        if cfg.packing == "padding_free" and cfg.padding_free_attention != "model":
            path = resolve_padding_free_path(cfg.padding_free_attention, acc.device.type)
            used = use_padding_free_attention(model, path)
            logger.info("padding-free packing: attention %s", used or "of the model (see the reason above)")
        # Before compile and prepare: the start check runs the bare model once.
        self.loss_head = chunked_loss_head(self, model) if cfg.loss_chunk_tokens else None
        if cfg.compile:
            # In place (nn.Module.compile): parameter names, checkpoints and unwrap_model stay as they are.
            model.compile()
            logger.info("trainer.compile: the model runs under torch.compile; the first steps include compilation")
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if cfg.packing == "padding_free":
            gap = check_packing_isolation(acc.unwrap_model(self.model))
            logger.info("padding-free packing: packed and separate logits agree (max gap %.2e)", gap)
        self.scheduler = self._build_scheduler(self.optimizer)
        # Stepped by us once per optimizer step (accelerate's wrapper would step it once per process).
        acc.register_for_checkpointing(self.scheduler)
        self._register_adapter_only_checkpoints()

    # ----- hooks -------------------------------------------------------------------------------------

    def compute_loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed next-token loss of one micro-batch (hook). Returns (loss_sum, extra metrics)."""
        if self.loss_head is not None:
            return chunked_head_loss(model, self.loss_head, batch, self.cfg.loss_chunk_tokens)[0], {}
        outputs = model(**model_forward_inputs(batch))
        loss_sum, _ = token_cross_entropy_sum(outputs.logits, batch["labels"])
        return loss_sum, {}

    def training_step(
        self, model, micro_batches: list[dict[str, torch.Tensor]], num_step_tokens: int
    ) -> dict[str, float]:
        """Forward and backward over this process's micro-batches of one optimizer step (hook).

        Returns this process's metric sums; `loss_sum` is summed over processes and divided by the
        step's target tokens for logging.
        """
        losses = []
        for i, batch in enumerate(micro_batches):
            with self.micro_step(is_last=i == len(micro_batches) - 1):
                loss_sum, _ = self.compute_loss(model, batch)
                scaled = step_normalised_loss(
                    loss_sum, num_step_tokens, self.world_size, self.cfg.gradient_accumulation_steps
                )
                self.accelerator.backward(scaled)
            losses.append(loss_sum.detach().reshape(()))
        # Read back once per step, not once per micro-batch (each read waits for the GPU); summed in Python
        # in the same order as before, so the logged loss is bit-for-bit what it was.
        return {"loss_sum": sum(torch.stack(losses).tolist()) if losses else 0.0}

    def step_metrics(self) -> dict[str, float]:
        """Extra values to log for the step just taken (hook; e.g. rollout rewards and lengths)."""
        return {}

    def steps_for_epochs(self, num_epochs: int) -> int:
        """Optimizer steps that `num_epochs` passes over the data take (hook; RL reuses each batch of rollouts)."""
        if self.token_budget is not None:
            return self.token_budget.total_steps(num_epochs)
        return num_epochs * self.steps_per_epoch

    def method_state_dict(self) -> dict[str, Any]:
        """Per-method state to store in checkpoints (hook; e.g. per-prompt accuracy history)."""
        return {}

    def load_method_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `method_state_dict` returned (hook)."""

    def process_state_dict(self) -> dict[str, Any]:
        """This process's own state to store in checkpoints (hook; e.g. its share of a rollout buffer).

        Unlike `method_state_dict` (written once, by the main process), every process writes its own file.
        """
        return {}

    def load_process_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `process_state_dict` returned on this process (hook)."""

    # ----- the loop ----------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Run the optimisation loop from step 0 or from the latest checkpoint; return final metrics."""
        from tqdm.auto import tqdm

        acc = self.accelerator
        self._prepare_output_dir()
        if self.cfg.report_to:
            acc.init_trackers(self.output_dir.name, config=flatten_for_trackers(self.run_config))
        if acc.is_main_process:
            batch = (
                f"token budget {self.cfg.max_tokens_per_step} tokens per step in rows of {self.cfg.packing_max_length}"
                if self.token_budget is not None
                else f"global batch {self.global_batch}"
            )
            logger.info(
                "distributed: %s, %d process(es), %s, %d steps (%d in the first epoch), mixed precision: %s",
                acc.distributed_type.value,
                self.world_size,
                batch,
                self.total_steps,
                self.steps_per_epoch,
                acc.mixed_precision,
            )
        dropped = (
            0 if self.token_budget is not None else len(self.train_data) - self.steps_per_epoch * self.global_batch
        )
        if dropped and acc.is_main_process:
            logger.warning(
                "each epoch drops its last %d example(s) (incomplete global batch of %d)", dropped, self.global_batch
            )

        if self.eval_data and self.cfg.eval_on_start and self.global_step == 0:
            self._log({"step": 0, "eval_loss": self.evaluate()})
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", disable=not acc.is_main_process)
        self._nonfinite_run = 0  # consecutive skipped steps (non-finite loss or gradient norm)
        window_start, window_tokens, window_inputs = time.time(), 0, 0
        while self.global_step < self.total_steps:
            micro_batches = self.step_batches(self.global_step)
            # Target tokens, real tokens and padded slots of the whole step, summed over processes (one reduce).
            packing = PackingStats()
            for b in micro_batches:
                packing.add(b)
            num_step_tokens, real_tokens, slots, rows, examples = self._sum_over_processes(
                sum(
                    b["num_target_tokens"] if "num_target_tokens" in b else count_target_tokens(b["labels"])
                    for b in micro_batches
                ),
                packing.real_tokens,
                packing.slots,
                packing.rows,
                packing.examples,
            )
            num_step_tokens = int(num_step_tokens)

            self.model.train()
            stats = self.training_step(self.model, micro_batches, num_step_tokens)
            grad_norm = self._clip_gradients()
            # One reduce gives every process the step's loss and whether any saw a non-finite gradient,
            # so all of them take (or skip) the optimizer step and stop together.
            loss_sum, nonfinite_grads = self._sum_over_processes(
                stats.pop("loss_sum"), self._nonfinite_gradients(grad_norm)
            )
            loss = loss_sum / max(num_step_tokens, 1)  # 0 loss tokens (every RL completion masked): loss 0
            finite = math.isfinite(loss) and nonfinite_grads == 0
            if finite:
                self.optimizer.step()  # skipped otherwise: a NaN update would poison every later step
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            self._nonfinite_run = 0 if finite else self._nonfinite_run + 1

            window_tokens += num_step_tokens
            window_inputs += int(real_tokens)
            record = {
                "step": self.global_step,
                "epoch": round(self.epochs_done(self.global_step), 4),
                "loss": loss,
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "num_tokens": num_step_tokens,
                "input_tokens": int(real_tokens),
                "padding_fraction": 1.0 - real_tokens / slots,
                "examples_per_row": examples / rows,
            }
            for key, value in stats.items():
                record[key] = self._sum_over_processes(value)[0] / max(num_step_tokens, 1)
            record.update(self.step_metrics())
            if self.global_step % self.cfg.logging_steps == 0 or self.global_step == self.total_steps:
                elapsed = max(time.time() - window_start, 1e-9)
                record["target_tokens_per_s"] = window_tokens / elapsed
                record["input_tokens_per_s"] = window_inputs / elapsed
                self._log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            else:
                self._log(record, console=False)
            bar.update(1)
            if not finite:
                self._on_nonfinite_step(loss, grad_norm, bar)

            if self.eval_data and self.cfg.eval_steps > 0 and self.global_step % self.cfg.eval_steps == 0:
                self._log({"step": self.global_step, "eval_loss": self.evaluate()})
            if self.cfg.save_steps > 0 and self.global_step % self.cfg.save_steps == 0:
                self.save_checkpoint()
            if "target_tokens_per_s" in record:  # the next window starts after eval and checkpoint time
                window_start, window_tokens, window_inputs = time.time(), 0, 0
            if os.environ.get(FAULT_KILL_AFTER_STEP) == str(self.global_step):
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()

        final: dict[str, Any] = {"step": self.global_step}
        if self.eval_data:
            last_eval = next((r for r in reversed(self.history) if "eval_loss" in r), None)
            if last_eval is not None and last_eval["step"] == self.global_step:
                final["eval_loss"] = last_eval["eval_loss"]
            else:
                final["eval_loss"] = self.evaluate()
                self._log({"step": self.global_step, "eval_loss": final["eval_loss"]})
        if self.cfg.save_final_model:
            self.save_final_model()
        if self.cfg.report_to:
            acc.end_training()
        return final

    # ----- pieces of the loop ------------------------------------------------------------------------

    @contextlib.contextmanager
    def micro_step(self, is_last: bool):
        """Context for one micro-batch: gradients are synchronised across processes only on the last."""
        acc = self.accelerator
        acc.gradient_state._set_sync_gradients(is_last)
        with contextlib.nullcontext() if is_last else acc.no_sync(self.model):
            yield

    def step_batches(self, step: int) -> list[dict[str, Any]]:
        """This process's collated micro-batches of optimizer step `step` (RL builds them from rollouts).

        Each dict holds at least input_ids, labels (-100 where no loss) and num_examples; the loop counts the
        step's target tokens from the labels. A method with its own batch layout overrides `make_batch`.
        """
        if self.token_budget is not None:
            return self.token_budget_batches(step)
        return self.micro_batches(self.train_data, self.cfg.per_device_batch_size, self.cfg.seed, step)

    def micro_batches(
        self, data: list[Any], per_device: int, seed: int, step: int, group_by_length: bool | None = None
    ) -> list[dict[str, Any]]:
        """This process's micro-batches of step `step` over `data`: its shards (`step_shards`) → `make_batch` →
        device. `per_device` and `seed` are arguments so that a second data set (unlearning's retain set)
        draws its batches through the same path."""
        shards = self.step_shards(data, per_device, seed, step, group_by_length)
        return [self.to_device(self.make_batch([data[i] for i in shard])) for shard in shards]

    def step_shards(
        self, data: list[Any], per_device: int, seed: int, step: int, group_by_length: bool | None = None
    ) -> list[list[int]]:
        """Indices into `data` of this process's micro-batches of step `step`: the seeded step indices split
        over processes and accumulation steps. `group_by_length` (default: the config's) sorts them by length."""
        cfg = self.cfg
        global_batch = per_device * cfg.gradient_accumulation_steps * self.world_size
        indices = step_indices(len(data), global_batch, seed, step, cfg.shuffle)
        if cfg.group_by_length if group_by_length is None else group_by_length:
            # Same examples in the step, fewer pad tokens: the step's loss does not depend on how its
            # examples are split into micro-batches and processes, so sorting them changes no gradient.
            indices = sorted(indices, key=lambda i: len(data[i].input_ids))
        return process_micro_batches(
            indices, self.world_size, self.accelerator.process_index, per_device, cfg.gradient_accumulation_steps
        )

    def make_batch(self, examples: list[Any]) -> dict[str, Any]:
        """Collate one micro-batch's examples into host tensors (hook; default: the `trainer.packing` collators)."""
        return collate_examples(examples, self.tokenizer.pad_token_id, self.cfg.packing, self.cfg.packing_max_length)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move a collated micro-batch to the device, counting its target and real tokens first, on the host:
        the loop then reads the counts without a device-to-host copy (a GPU wait) per micro-batch."""
        counted = {**batch, "num_target_tokens": count_target_tokens(batch["labels"])}
        if "num_real_tokens" not in counted:
            mask = batch.get("attention_mask")
            counted["num_real_tokens"] = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        device = self.accelerator.device
        # On CUDA, copy from pinned memory without blocking, as torch's DataLoader(pin_memory=True) does: the host
        # goes on to the next micro-batch while the copy runs (torch keeps the pinned block until it is done).
        cuda = device.type == "cuda"
        return {
            k: (v.pin_memory() if cuda else v).to(device, non_blocking=cuda) if isinstance(v, torch.Tensor) else v
            for k, v in counted.items()
        }

    # ----- token-budget batches ----------------------------------------------------------------------

    def _token_budget_schedule(self) -> TokenBudgetSchedule | None:
        """The plan of `trainer.max_tokens_per_step` batches, or None when it is 0; refuses what it cannot serve."""
        cfg = self.cfg
        if not cfg.max_tokens_per_step:
            return None
        if not supports_token_budget(type(self)):
            overridden = [h for h in TOKEN_BUDGET_HOOKS if getattr(type(self), h) is not getattr(Trainer, h)]
            raise ConfigError(
                f"trainer.max_tokens_per_step is not supported by {type(self).__name__} (method '{self.method_name}' "
                f"builds its own batches: it overrides {', '.join(overridden)}); set trainer.max_tokens_per_step: 0"
            )
        if cfg.packing not in ("padding_free", "dynamic"):
            raise ConfigError(
                f"trainer.max_tokens_per_step packs examples into rows: set trainer.packing: padding_free (examples "
                f"kept apart) or dynamic (examples in a row see each other), not {cfg.packing}"
            )
        if self.accelerator.distributed_type.value == "DEEPSPEED":
            raise ConfigError(
                "trainer.max_tokens_per_step gives steps a varying number of micro-batches, which DeepSpeed's fixed "
                "gradient accumulation cannot follow; use DDP (accelerate_configs/cpu_ddp.yaml or multi_gpu) or "
                "set it to 0"
            )
        if not self.train_data:
            raise ConfigError("the training set is empty")
        lengths = [min(len(ex.input_ids), cfg.packing_max_length) for ex in self.train_data]  # as collated
        return TokenBudgetSchedule(lengths, cfg.seed, cfg.packing_max_length, cfg.max_tokens_per_step, cfg.shuffle)

    def token_budget_batches(self, step: int) -> list[dict[str, Any]]:
        """This process's micro-batches of a token-budget step: one packed row each, empty rows (no loss
        tokens) where this process has fewer rows than another (see `process_rows`)."""
        acc = self.accelerator
        rows = self.token_budget.step_rows(step)
        mine = process_rows(rows, self.token_budget.lengths, self.world_size, acc.process_index)
        pad = self.tokenizer.pad_token_id
        batches = []
        for row in mine:
            if row is None:
                # Two pad tokens and no target: the forward and backward run (DDP needs every process's
                # backward to all-reduce) and add nothing to the gradient or the loss.
                filler = TokenizedExample([pad, pad], [IGNORE_INDEX, IGNORE_INDEX], "filler")
                batch = {**self.make_batch([filler]), "num_examples": 0, "num_real_tokens": 0}
            else:
                batch = self.make_batch([self.train_data[i] for i in row])
            batches.append(self.to_device(batch))
        return batches

    def epochs_done(self, steps: int) -> float:
        """Epochs that `steps` optimizer steps make, as a fraction (the logs' and checkpoints' `epoch`)."""
        if self.token_budget is not None:
            return self.token_budget.epochs_done(steps)
        return steps / self.steps_per_epoch

    def _sum_over_processes(self, *values: float) -> list[float]:
        """Sum each value over all processes (one all-reduce); returns a list in the same order."""
        if self.world_size == 1:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def _clip_gradients(self) -> float | None:
        acc = self.accelerator
        if acc.distributed_type.value == "DEEPSPEED":
            # DeepSpeed clips inside its step (gradient_clipping in its config); read the norm back.
            norm = getattr(acc.deepspeed_engine_wrapped, "get_global_grad_norm", lambda: None)()
            return None if norm is None else float(norm)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.max_grad_norm > 0:
            return float(acc.clip_grad_norm_(params, self.cfg.max_grad_norm))
        norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        return float(torch.stack(norms).norm()) if norms else 0.0

    def _nonfinite_gradients(self, grad_norm: float | None) -> float:
        """1.0 when this process's gradient norm is NaN/inf, else 0.0 (summed over processes by the loop).

        Under fp16 loss scaling (torch's GradScaler or DeepSpeed's) an infinite gradient is routine: the
        scaler skips that step and lowers the scale itself, so only the loss is checked there.
        """
        if grad_norm is None or self.accelerator.mixed_precision == "fp16":
            return 0.0
        return 0.0 if math.isfinite(grad_norm) else 1.0

    def _on_nonfinite_step(self, loss: float, grad_norm: float | None, bar) -> None:
        """After a skipped step: warn while within `max_nonfinite_steps`, else close `bar` (so the error
        starts its own line) and stop with TrainingError."""
        norm = "unknown" if grad_norm is None else f"{grad_norm:.4g}"
        what = f"loss or gradient norm (loss {loss:.4g}, gradient norm {norm})"
        if self._nonfinite_run <= self.cfg.max_nonfinite_steps:
            if self.accelerator.is_main_process:
                logger.warning(
                    "step %d: non-finite %s; the optimizer step was skipped (%d of %d allowed in a row)",
                    self.global_step,
                    what,
                    self._nonfinite_run,
                    self.cfg.max_nonfinite_steps,
                )
            return
        bar.close()
        raise TrainingError(
            f"training stopped at step {self.global_step}: non-finite {what} "
            f"({self._nonfinite_run} step(s) in a row, trainer.max_nonfinite_steps={self.cfg.max_nonfinite_steps}); "
            f"{self._last_good_checkpoint()}, no final model was saved; lower trainer.learning_rate or check the data"
        )

    def _last_good_checkpoint(self) -> str:
        latest = ckpt.latest_checkpoint(self.output_dir)
        return f"the last good checkpoint is {latest}" if latest else "there is no checkpoint"

    def _check_weights_finite(self, what: str) -> None:
        """Refuse to write `what` when a trainable weight is NaN/inf on any process (it would be published)."""
        params = [p for p in self.model.parameters() if p.requires_grad and p.numel() > 0]
        local_ok = bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()) if params else True
        if self._sum_over_processes(0.0 if local_ok else 1.0)[0] > 0:
            raise TrainingError(
                f"the weights hold NaN/inf values at step {self.global_step}, so {what} was not written; "
                f"{self._last_good_checkpoint()}; lower trainer.learning_rate or check the data"
            )

    def _build_scheduler(self, optimizer):
        from transformers import get_scheduler

        warmup = self.cfg.warmup_steps or int(math.ceil(self.cfg.warmup_ratio * self.total_steps))
        return get_scheduler(
            self.cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the eval set (sharded across processes)."""
        self.model.eval()
        acc = self.accelerator
        mine = self.eval_data[acc.process_index :: self.world_size]
        loss_sum, count = 0.0, 0
        pad = self.tokenizer.pad_token_id
        bs = self.cfg.per_device_batch_size
        for start in range(0, len(mine), bs):
            batch = {k: v.to(acc.device) for k, v in collate(mine[start : start + bs], pad).items()}
            if self.loss_head is not None:
                s, n = chunked_head_loss(self.model, self.loss_head, batch, self.cfg.loss_chunk_tokens)
            else:
                s, n = token_cross_entropy_sum(
                    self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                    batch["labels"],
                )
            loss_sum += float(s)
            count += int(n)
        total_loss, total_count = self._sum_over_processes(loss_sum, count)
        return total_loss / max(total_count, 1.0)

    # ----- logging -----------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any], console: bool = True) -> None:
        acc = self.accelerator
        self.history.append(record)
        if not acc.is_main_process:
            return
        with (self.output_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.cfg.report_to:
            acc.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])

    # ----- checkpoints -------------------------------------------------------------------------------

    def _prepare_output_dir(self) -> None:
        acc = self.accelerator
        existing = ckpt.complete_checkpoints(self.output_dir)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            removed = ckpt.remove_incomplete(self.output_dir)
            for path in removed:
                logger.warning("removed incomplete checkpoint %s (its write was interrupted)", path)
            if existing and not self.cfg.resume:
                if not self.cfg.overwrite_output_dir:
                    raise ConfigError(
                        f"{self.output_dir} already has checkpoints; pass --resume to continue "
                        "or --overwrite_output_dir to start again"
                    )
                for _, path in existing:
                    shutil.rmtree(path)
            self._refuse_to_replace_a_finished_model(existing)
            if not self.cfg.resume:
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
        acc.wait_for_everyone()
        if self.cfg.resume:
            latest = ckpt.latest_checkpoint(self.output_dir)
            if latest is None:
                if acc.is_main_process:
                    logger.warning("--resume: no complete checkpoint in %s, starting from step 0", self.output_dir)
                    (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
            else:
                self.load_checkpoint(latest)
        acc.wait_for_everyone()

    def _refuse_to_replace_a_finished_model(self, checkpoints: list) -> None:
        """A folder that holds a trained model (and no checkpoints) is only replaced when asked to be."""
        if checkpoints or self.cfg.resume or self.cfg.overwrite_output_dir:
            return
        found = ckpt.final_model_files(self.output_dir)
        if found:
            raise ConfigError(
                f"{self.output_dir} already holds a trained model ({found[0]}); pass --trainer.overwrite_output_dir "
                "to replace it, or set another trainer.output_dir"
            )

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<step> atomically (all processes take part) and rotate old ones."""
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{self.global_step}"
        self._check_weights_finite(final.name)
        tmp = self.output_dir / f"{ckpt.TMP_PREFIX}{self.global_step}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        process_state = self.process_state_dict()
        if process_state:
            torch.save(process_state, tmp / f"process_state_{acc.process_index}.pt")
        if acc.is_main_process:
            torch.save(self.method_state_dict(), tmp / "method_state.pt")
            atomic_write_json(
                tmp / "trainer_state.json",
                {
                    "global_step": self.global_step,
                    "epoch": self.epochs_done(self.global_step),
                    "max_tokens_per_step": self.cfg.max_tokens_per_step,
                    "global_batch": self.global_batch,
                    "steps_per_epoch": self.steps_per_epoch,
                    "total_steps": self.total_steps,
                    "seed": self.cfg.seed,
                    "world_size": self.world_size,
                },
            )
        acc.wait_for_everyone()
        if os.environ.get(FAULT_KILL_IN_SAVE) == str(self.global_step):
            os.kill(os.getpid(), signal.SIGKILL)
        if acc.is_main_process:
            ckpt.publish(tmp, final)
            for path in ckpt.rotate(self.output_dir, self.cfg.save_total_limit):
                logger.info("rotated out %s", path)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, RNG and method state, and the step, from `path`.

        The files are checked against the checkpoint's checksums first; a damaged checkpoint raises
        CheckpointError naming the file instead of loading changed weights or failing with a traceback.
        """
        ckpt.verify_checksums(path)
        state = ckpt.read_trainer_state(path)
        budget = state.get("max_tokens_per_step", 0)  # absent in checkpoints written before token budgets
        if budget != self.cfg.max_tokens_per_step:
            raise ConfigError(
                f"cannot resume from {path}: it used trainer.max_tokens_per_step {budget}, "
                f"this run uses {self.cfg.max_tokens_per_step}"
            )
        if state["global_batch"] != self.global_batch or state["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(
                f"cannot resume from {path}: it used a global batch of {state['global_batch']} "
                f"({state['steps_per_epoch']} steps/epoch), this run uses {self.global_batch} ({self.steps_per_epoch})"
            )
        with _unreadable_checkpoint(path):
            self._load_checkpoint_files(path)
        self.global_step = int(state["global_step"])
        if self.accelerator.is_main_process:
            self._truncate_metrics(self.global_step)
            logger.info("resumed from %s at step %d", path, self.global_step)

    def _load_checkpoint_files(self, path: Path) -> None:
        """accelerate's state (model, optimizer, scheduler, RNG), then the method and process state."""
        kwargs = {}
        if self.accelerator.distributed_type.value != "DEEPSPEED" and _is_peft(
            self.accelerator.unwrap_model(self.model)
        ):
            kwargs["strict"] = False  # LoRA checkpoints hold only the trainable weights
        self.accelerator.load_state(str(path), **kwargs)
        method_state = path / "method_state.pt"
        if method_state.is_file():
            self.load_method_state_dict(torch.load(method_state, weights_only=False))
        process_state = path / f"process_state_{self.accelerator.process_index}.pt"
        if process_state.is_file():
            self.load_process_state_dict(torch.load(process_state, weights_only=False))

    def _truncate_metrics(self, step: int) -> None:
        """Drop logged rows after `step` (written by the run that crashed) so the log has no duplicates."""
        path = self.output_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))
        self.history = [json.loads(line) for line in keep]

    def _register_adapter_only_checkpoints(self) -> None:
        """For LoRA models, checkpoints hold only trainable weights, not a copy of the frozen base."""
        acc = self.accelerator
        if acc.distributed_type.value == "DEEPSPEED" or not _is_peft(acc.unwrap_model(self.model)):
            return

        def keep_trainable(models, weights, output_dir):
            for model, state in zip(models, weights):
                unwrapped = acc.unwrap_model(model)
                trainable = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
                for key in list(state):
                    if key not in trainable:
                        del state[key]

        acc.register_save_state_pre_hook(keep_trainable)

    # ----- final save --------------------------------------------------------------------------------

    def save_final_model(self) -> Path:
        """Save the final model (or LoRA adapter) with tokenizer, config, model card and loss plot."""
        from llmkit.train.card import write_loss_plot, write_model_card

        acc = self.accelerator
        self._check_weights_finite("the final model")
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(self.model)
            base_name = self.run_config.get("model", {}).get("name")
            extra = {}
            if _is_peft(unwrapped):
                if base_name:
                    unwrapped.peft_config["default"].base_model_name_or_path = base_name
                targets = unwrapped.peft_config["default"].target_modules or []
                # "auto" would look the base model up (on the hub for an alias) to decide; decide here.
                extra["save_embedding_layers"] = any("embed" in t or "lm_head" in t for t in targets)
            unwrapped.save_pretrained(self.output_dir, state_dict=state_dict, safe_serialization=True, **extra)
            self.tokenizer.save_pretrained(self.output_dir)
            import yaml

            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
            write_model_card(
                self.output_dir, self.run_config, self.method_name, self.history, is_adapter=_is_peft(unwrapped)
            )
            write_loss_plot(self.output_dir, self.history)
            atomic_write_json(
                self.output_dir / "trainer_state.json", {"global_step": self.global_step, "world_size": self.world_size}
            )
        acc.wait_for_everyone()
        return self.output_dir
