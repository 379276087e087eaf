"""The trainer's batch seam (issue 23): a method overrides `make_batch` and inherits the plumbing (indices →
shards → device), and `supports_packing` refuses a packing mode once, at start, in one line."""

from __future__ import annotations

import pytest
import torch

from llmkit.data.padding import pad_right
from llmkit.errors import ConfigError
from llmkit.models import ModelConfig, load_model
from llmkit.rl.grpo import GRPOTrainer
from llmkit.train import Trainer, TrainerConfig
from llmkit.train.trainer import check_packing


def _trainer(cls, tmp_path, tokenizer, examples, name, **overrides):
    settings = dict(
        output_dir=str(tmp_path / name),
        max_steps=2,
        per_device_batch_size=2,
        learning_rate=1e-3,
        lr_scheduler="constant",
        seed=3,
        save_final_model=False,
        logging_steps=1,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    return cls(TrainerConfig(**settings), model, tokenizer, examples)


def test_subclass_overriding_only_make_batch_trains(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    seen: list[int] = []

    class Padded(Trainer):
        def make_batch(self, examples):
            # Its own collation (plain right-padding), nothing else: the shared step does the rest.
            seen.append(len(examples))
            batch = pad_right(
                [ex.input_ids for ex in examples], self.tokenizer.pad_token_id, [ex.labels for ex in examples]
            )
            return {**batch, "num_examples": len(examples)}

    own = _trainer(Padded, tmp_path, tokenizer, code_examples, "own")
    batches = own.step_batches(0)
    assert seen == [2] and batches[0]["input_ids"].device == own.accelerator.device
    assert batches[0]["num_target_tokens"] == int((batches[0]["labels"] != -100).sum())
    own.train()
    own_losses = [h["loss"] for h in own.history if "loss" in h]
    assert len(own_losses) == 2 and all(torch.isfinite(torch.tensor(own_losses)))
    # Right-padding is what packing "none" does, so the losses are those of the base trainer.
    base = _trainer(Trainer, tmp_path, tokenizer, code_examples, "base")
    base.train()
    assert own_losses == [h["loss"] for h in base.history if "loss" in h]


def test_supports_packing_refuses_a_mode_in_one_line(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    class RowPerExample(Trainer):
        supports_packing = ("none",)

    with pytest.raises(
        ConfigError,
        match=r"^trainer.packing: dynamic is not supported by RowPerExample "
        r"\(method 'sft'\); use none$",
    ):
        _trainer(RowPerExample, tmp_path, tokenizer, code_examples, "refused", packing="dynamic")


@pytest.mark.parametrize("mode", ["padding_free", "dynamic"])
def test_grpo_refuses_packing_out_loud(mode):
    grpo = GRPOTrainer.__new__(GRPOTrainer)  # the check reads only the class's declarations
    with pytest.raises(
        ConfigError,
        match=rf"^trainer.packing: {mode} is not supported by GRPOTrainer "
        r"\(method 'grpo'\); use none$",
    ):
        check_packing(grpo, mode)
    check_packing(grpo, "none")


def test_pad_right_by_hand():
    out = pad_right([[5, 6, 7], [8]], pad_token_id=0, labels=[[-100, 6, 7], []])
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert out["input_ids"].dtype == out["labels"].dtype == torch.long
    assert set(pad_right([[1], [2, 3]], 9)) == {"input_ids", "attention_mask"}
