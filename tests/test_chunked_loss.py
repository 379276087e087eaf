"""trainer.loss_chunk_tokens (issue 24 item 3): the chunked output head + loss by hand, equal to the plain loss in
value and gradients, the same training run as the plain loss, and one-line refusals where it cannot be used."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from llmkit.errors import ConfigError
from llmkit.models import LoraAdapterConfig, ModelConfig, apply_lora, load_model
from llmkit.train import Trainer, TrainerConfig
from llmkit.train.losses import chunked_linear_cross_entropy_sum, token_cross_entropy_sum

# ----- the pure function -----------------------------------------------------------------------------------


def test_chunked_loss_by_hand():
    # Identity head over 2-dim hidden states: the logits are the hidden states themselves.
    weight = torch.eye(2, requires_grad=True)
    hidden = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)], [5.0, 5.0]]], requires_grad=True)
    # labels[t + 1] is predicted from hidden[t]: position 0 → label 1 (p = 3/4), position 1 → label 0 (p = 1/4);
    # position 2 predicts nothing.
    labels = torch.tensor([[-100, 1, 0]])
    for chunk in (1, 2, 64):
        loss, n = chunked_linear_cross_entropy_sum(hidden, weight, labels, chunk)
        assert int(n) == 2
        assert float(loss.detach()) == pytest.approx(math.log(4 / 3) + math.log(4), rel=1e-6)
    # With a bias of +ln 3 on token 0 both positions become p = 1/2.
    loss, _ = chunked_linear_cross_entropy_sum(hidden, weight, labels, 1, bias=torch.tensor([math.log(3.0), 0.0]))
    assert float(loss.detach()) == pytest.approx(2 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        chunked_linear_cross_entropy_sum(hidden, weight, labels, 0)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(chunk):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=True)
    bias = torch.randn(50, generator=gen, requires_grad=True)
    labels = torch.randint(0, 50, (3, 9), generator=gen)
    labels[0, :4] = -100  # a prompt
    labels[2, 6:] = -100  # padding
    plain, n_plain = token_cross_entropy_sum(torch.nn.functional.linear(hidden, weight, bias), labels)
    grads_plain = torch.autograd.grad(plain, (hidden, weight, bias))
    chunked, n = chunked_linear_cross_entropy_sum(hidden, weight, labels, chunk, bias=bias)
    grads = torch.autograd.grad(chunked, (hidden, weight, bias))
    assert int(n) == int(n_plain) == 3 * 8 - 3 - 3
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    for g, g_plain in zip(grads, grads_plain):
        torch.testing.assert_close(g, g_plain, rtol=1e-5, atol=1e-6)
    # Non-target positions get no gradient at all.
    assert torch.all(grads[0][0, :3] == 0) and torch.all(grads[0][:, -1] == 0)


def test_a_batch_without_targets_gives_a_connected_zero():
    hidden = torch.randn(2, 4, 3, requires_grad=True)
    weight = torch.randn(5, 3, requires_grad=True)
    loss, n = chunked_linear_cross_entropy_sum(hidden, weight, torch.full((2, 4), -100), 2)
    assert float(loss.detach()) == 0.0 and int(n) == 0
    loss.backward()  # DDP needs every parameter in the graph, even for an empty filler row
    assert weight.grad is not None and torch.all(weight.grad == 0)


# ----- the trainer ---------------------------------------------------------------------------------------


def _run(tmp_path, tokenizer, examples, name, model=None, **overrides):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    settings = dict(
        output_dir=str(tmp_path / name),
        max_steps=3,
        learning_rate=1e-3,
        lr_scheduler="constant",
        per_device_batch_size=4,
        seed=3,
        eval_on_start=True,
        save_final_model=False,
    )
    settings.update(overrides)
    model = model or load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    trainer = Trainer(TrainerConfig(**settings), model, tokenizer, examples[:16], eval_data=examples[16:24])
    trainer.train()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    return trainer, losses, trainer.history[0]["eval_loss"]


@pytest.mark.parametrize("packing", ["none", "padding_free"])
def test_training_with_the_chunked_loss_equals_the_plain_loss(
    tmp_path, code_examples, tokenizer, fresh_accelerate_state, packing
):
    plain, plain_losses, plain_eval = _run(tmp_path, tokenizer, code_examples, "plain", packing=packing)
    chunked, losses, eval_loss = _run(
        tmp_path, tokenizer, code_examples, "chunked", packing=packing, loss_chunk_tokens=37
    )
    assert chunked.loss_head is not None and plain.loss_head is None
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    assert losses[0] != losses[-1]
    assert eval_loss == pytest.approx(plain_eval, rel=1e-5)
    trained = chunked.accelerator.unwrap_model(chunked.model).state_dict()
    for key, value in plain.accelerator.unwrap_model(plain.model).state_dict().items():
        torch.testing.assert_close(trained[key], value, atol=1e-5, rtol=0)


def test_lora_training_with_the_chunked_loss_equals_the_plain_loss(
    tmp_path, code_examples, tokenizer, fresh_accelerate_state
):
    def lora_model():
        model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
        torch.manual_seed(0)  # the same LoRA A matrices in both runs
        return apply_lora(model, LoraAdapterConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))

    _, plain, _ = _run(tmp_path, tokenizer, code_examples, "plain", model=lora_model())
    _, chunked, _ = _run(tmp_path, tokenizer, code_examples, "chunked", model=lora_model(), loss_chunk_tokens=50)
    assert chunked == pytest.approx(plain, rel=1e-5)


def test_refusals_are_one_line(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    with pytest.raises(ValueError, match="loss_chunk_tokens must be >= 0"):
        TrainerConfig(loss_chunk_tokens=-1)

    class OwnLoss(Trainer):
        def compute_loss(self, model, batch):
            return super().compute_loss(model, batch)

    def make(cls, model=None):
        model = model or load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
        cfg = TrainerConfig(output_dir=str(tmp_path / "r"), loss_chunk_tokens=16, save_final_model=False)
        return cls(cfg, model, tokenizer, code_examples[:8])

    with pytest.raises(ConfigError, match="loss_chunk_tokens is not supported by OwnLoss .*overrides compute_loss"):
        make(OwnLoss)

    # LoRA on the output head: the head is an adapter layer, not a Linear the loss can apply.
    base = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    on_head = apply_lora(base, LoraAdapterConfig(r=4, alpha=8, dropout=0.0, target_modules=["lm_head"]))
    with pytest.raises(ConfigError, match="needs a plain Linear output head"):
        make(Trainer, on_head)

    # Logits that are more than the head over the last hidden state (a logit scale, as Cohere's models have):
    # refused at start instead of training on another loss.
    class ScaledLogits(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 1000.0
            return out

    plain = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    scaled = ScaledLogits(plain.config)
    scaled.load_state_dict(plain.state_dict())
    with pytest.raises(ConfigError, match="logits are not its output head over its last hidden state"):
        make(Trainer, scaled)


def test_method_trainers_with_their_own_loss_refuse_it():
    from llmkit.rl.grpo import GRPOTrainer
    from llmkit.safety.probe_training import ProbeTrainer
    from llmkit.train.trainer import LOSS_HOOKS, chunked_loss_head
    from llmkit.unlearning.trainer import UnlearningTrainer

    # Their loss is not the base next-token loss: each overrides a loss hook, and the check refuses before it
    # looks at the model.
    for cls in (GRPOTrainer, ProbeTrainer, UnlearningTrainer):
        assert any(getattr(cls, hook) is not getattr(Trainer, hook) for hook in LOSS_HOOKS)
        fake = cls.__new__(cls)
        fake.method_name = "m"
        with pytest.raises(ConfigError, match=f"not supported by {cls.__name__} .*overrides"):
            chunked_loss_head(fake, model=None)
