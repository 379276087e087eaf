"""The weights handed to a colocated vLLM engine equal the policy's (LoRA folded in, checkpoint names)."""

from __future__ import annotations

import copy

import torch

from llmkit.models import LoraAdapterConfig, TinyModelConfig, apply_lora, build_tiny_model
from llmkit.rl.weight_sync import inference_weights


def _tiny(seed=0):
    torch.manual_seed(seed)
    return build_tiny_model(TinyModelConfig(), vocab_size=128)


def test_lora_weights_folded_under_checkpoint_names():
    base = _tiny()
    reference = copy.deepcopy(base)
    policy = apply_lora(base, LoraAdapterConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():  # an "update": LoRA B starts at zero, which would make the test vacuous
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy.eval()
    weights = dict(inference_weights(policy))
    # every weight under its checkpoint name (tied lm_head/embeddings appear once, as in named_parameters)
    assert sorted(weights) == sorted(n for n, _ in reference.named_parameters())
    # by hand for one module: W + (alpha / r) · B A
    q = policy.base_model.model.model.layers[0].self_attn.q_proj
    expected = q.base_layer.weight + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"], expected)
    # loading them into a plain copy of the base model reproduces the policy's logits
    missing, unexpected = reference.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    ids = torch.randint(0, 128, (2, 9))
    torch.testing.assert_close(reference(ids).logits, policy(ids).logits, atol=1e-5, rtol=1e-5)
    # the base layer itself was not modified (no merge left behind)
    assert not torch.allclose(q.base_layer.weight, expected)


def test_full_model_gives_every_parameter():
    model = _tiny()
    weights = list(inference_weights(model))
    assert [n for n, _ in weights] == [n for n, _ in model.named_parameters()]
    assert all(w is p.detach() or torch.equal(w, p) for (_, w), p in zip(weights, model.parameters()))


def test_modules_to_save_give_the_trained_copy():
    base = _tiny()
    policy = apply_lora(
        base, LoraAdapterConfig(r=4, alpha=4, dropout=0.0, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    head = policy.base_model.model.lm_head
    with torch.no_grad():
        head.modules_to_save["default"].weight.add_(1.0)
    weights = dict(inference_weights(policy))
    torch.testing.assert_close(weights["lm_head.weight"], head.modules_to_save["default"].weight)
    assert not any("lora_" in n or "modules_to_save" in n or "original_module" in n for n in weights)
