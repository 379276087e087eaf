"""The shared trainer in one process: accumulation equivalence, token normalisation, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.models import ModelConfig, load_model
from llmkit.train import Trainer, TrainerConfig


def train_tiny(tmp_path, name, examples, tokenizer, **overrides):
    settings = dict(
        max_steps=3, learning_rate=1e-2, lr_scheduler="constant", shuffle=True, seed=3, save_final_model=False
    )
    settings.update(overrides)
    cfg = TrainerConfig(output_dir=str(tmp_path / name), **settings)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    trainer = Trainer(cfg, model, tokenizer, examples)
    trainer.train()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    weights = {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    return losses, weights


def test_accumulation_4x2_equals_1x8_on_unequal_lengths(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    lengths = {len(e.input_ids) for e in code_examples[:24]}
    assert len(lengths) > 5  # the data really has unequal lengths
    losses_a, weights_a = train_tiny(
        tmp_path, "ga", code_examples[:24], tokenizer, per_device_batch_size=2, gradient_accumulation_steps=4
    )
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    losses_b, weights_b = train_tiny(
        tmp_path, "big", code_examples[:24], tokenizer, per_device_batch_size=8, gradient_accumulation_steps=1
    )
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    assert losses_a[0] != losses_a[-1]  # it trained
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], atol=1e-5, rtol=0)


def test_logged_loss_is_the_token_weighted_mean(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    from llmkit.data import collate
    from llmkit.train.losses import token_cross_entropy_sum

    examples = code_examples[:8]
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        s, n = token_cross_entropy_sum(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    expected_first = (s / n).item()
    losses, _ = train_tiny(
        tmp_path, "mean", examples, tokenizer, per_device_batch_size=2, gradient_accumulation_steps=4, shuffle=False
    )
    assert losses[0] == pytest.approx(expected_first, rel=1e-5)


def test_final_outputs_and_model_card(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    cfg = TrainerConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_batch_size=4, lr_scheduler="constant")
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    run_config = {"model": {"name": "tiny-random-llama"}, "data": {"path": "codealpaca/x.json"}}
    trainer = Trainer(cfg, model, tokenizer, code_examples[:8], eval_data=code_examples[8:12], run_config=run_config)
    result = trainer.train()
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "training_loss.png", "config.yaml"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "base_model: tiny-random-llama" in card and "codealpaca/x.json" in card and "transformers:" in card
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert rows[-1]["eval_loss"] == pytest.approx(result["eval_loss"])
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    ids = torch.tensor([code_examples[0].input_ids])
    torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits)


def test_existing_checkpoints_need_resume_or_overwrite(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    from llmkit.errors import ConfigError

    out = tmp_path / "o"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "COMPLETE").write_text("ok")
    cfg = TrainerConfig(output_dir=str(out), max_steps=1, per_device_batch_size=4, save_final_model=False)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    with pytest.raises(ConfigError, match="already has checkpoints; pass --resume"):
        Trainer(cfg, model, tokenizer, code_examples[:8]).train()


def test_gradient_checkpointing_gives_the_same_gradients(code_examples, tokenizer):
    from llmkit.data import collate
    from llmkit.train.losses import token_cross_entropy_sum

    batch = collate(code_examples[:4], tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        model = load_model(
            ModelConfig(name="tiny-random-llama", gradient_checkpointing=checkpointing), vocab_size=len(tokenizer)
        )
        model.train()
        s, _ = token_cross_entropy_sum(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
        s.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.is_gradient_checkpointing
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


class CountingTrainer(Trainer):
    """A method with per-run state: counts the examples it has seen, like a per-prompt history would."""

    method_name = "counting"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = 0

    def training_step(self, model, micro_batches, num_step_tokens):
        self.seen += sum(b["input_ids"].shape[0] for b in micro_batches)
        return super().training_step(model, micro_batches, num_step_tokens)

    def method_state_dict(self):
        return {"seen": self.seen}

    def load_method_state_dict(self, state):
        self.seen = state["seen"]


def test_method_state_survives_resume(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    from accelerate.state import AcceleratorState, GradientState

    def make(resume, max_steps):
        cfg = TrainerConfig(
            output_dir=str(tmp_path / "m"),
            max_steps=max_steps,
            per_device_batch_size=2,
            save_steps=2,
            resume=resume,
            save_final_model=False,
            lr_scheduler="constant",
        )
        model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
        return CountingTrainer(cfg, model, tokenizer, code_examples[:16])

    first = make(resume=False, max_steps=3)
    first.train()
    assert first.seen == 6 and (tmp_path / "m" / "checkpoint-2").is_dir()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    second = make(resume=True, max_steps=4)
    second.train()
    # resumed at step 2 with seen=4, then trained steps 3 and 4
    assert second.seen == 8
    assert [r["step"] for r in second.history if "loss" in r] == [1, 2, 3, 4]


def test_cli_launch_command_shapes():
    import sys as _sys

    from llmkit.cli import launch_command
    from llmkit.errors import ConfigError

    plain = launch_command("sft", None, None, ["--config", "x.yaml"])
    assert (
        plain[0] == _sys.executable
        and plain[1].endswith("recipes/sft/train.py")
        and plain[2:] == ["--config", "x.yaml"]
    )
    ddp = launch_command("sft", "zero2", 4, [])
    assert ddp[1:3] == ["-m", "accelerate.commands.launch"]
    assert ddp[4].endswith("accelerate_configs/zero2.yaml") and ddp[5:7] == ["--num_processes", "4"]
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        launch_command("nope", None, None, [])
    with pytest.raises(ConfigError, match="accelerate config not found: zero9"):
        launch_command("sft", "zero9", None, [])


def test_tensorboard_tracker_gets_scalars(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmkit.train.trainer import flatten_for_trackers

    assert flatten_for_trackers({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x"}) == {
        "a.b": 1,
        "a.c": "None",
        "a.d": "[1, 2]",
        "e": "x",
    }
    cfg = TrainerConfig(
        output_dir=str(tmp_path / "tb"),
        max_steps=2,
        per_device_batch_size=4,
        report_to=["tensorboard"],
        save_final_model=False,
    )
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    Trainer(cfg, model, tokenizer, code_examples[:8], run_config={"model": {"lora": None}}).train()
    events = sorted((tmp_path / "tb").rglob("events.out.tfevents*"))
    scalars = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "num_tokens"} <= scalars
