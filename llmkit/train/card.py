"""The generated model card (README.md with YAML front-matter) and the training-loss plot."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import yaml

from llmkit.env import package_versions

_METHOD_PAPERS = {
    "sft": "supervised fine-tuning with a response-only loss",
}


def write_model_card(
    output_dir: Path, run_config: dict[str, Any], method: str, history: list[dict[str, Any]], is_adapter: bool
) -> Path:
    """Write `output_dir/README.md`: base model, data, method, config, final metrics and versions."""
    model_name = run_config.get("model", {}).get("name", "unknown")
    data_path = run_config.get("data", {}).get("path", "unknown")
    front = {
        "base_model": model_name,
        "library_name": "peft" if is_adapter else "transformers",
        "tags": ["llmkit", method] + (["lora"] if is_adapter else []),
        "datasets": [data_path],
    }
    train_rows = [r for r in history if "loss" in r]
    eval_rows = [r for r in history if "eval_loss" in r]
    results = []
    if train_rows:
        results.append(f"- final training loss: {train_rows[-1]['loss']:.4f} at step {train_rows[-1]['step']}")
    if eval_rows:
        results.append(f"- final eval loss: {eval_rows[-1]['eval_loss']:.4f}")
    versions = "\n".join(f"- {name}: {ver}" for name, ver in package_versions().items())
    load = (
        "from llmkit.models import load_trained\n"
        f'model, tokenizer = load_trained("{output_dir}")  # merges the LoRA adapter into the base'
        if is_adapter
        else f'from transformers import pipeline\npipe = pipeline("text-generation", model="{output_dir}")'
    )
    adapter_note = " as a LoRA adapter" if is_adapter else ""
    written = _dt.datetime.now().isoformat(timespec="seconds")
    body = f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {output_dir.name}

Trained with llmkit (`{method}`: {_METHOD_PAPERS.get(method, method)}) on `{data_path}`,
starting from `{model_name}`{adapter_note}. Written {written}.

## Results

{chr(10).join(results) or "- (no steps logged)"}

The per-step log is `metrics.jsonl`; the loss curve is `training_loss.png`.

## Quick start

```python
{load}
```

Serve it with vLLM after `llmkit export {output_dir} EXPORT_DIR` (a plain HF folder).

## Configuration

```yaml
{yaml.safe_dump(run_config, sort_keys=False).strip()}
```

## Framework versions

{versions}
"""
    path = output_dir / "README.md"
    path.write_text(body)
    return path


def write_loss_plot(output_dir: Path, history: list[dict[str, Any]]) -> Path | None:
    """Plot training (and eval) loss against step to `output_dir/training_loss.png`."""
    train_rows = [r for r in history if "loss" in r]
    if not train_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train loss")
    eval_rows = [r for r in history if "eval_loss" in r]
    if eval_rows:
        ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(output_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = output_dir / "training_loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
