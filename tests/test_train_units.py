"""Pure pieces of the trainer: losses, batching, checkpoint folders; checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.train import checkpoint as ckpt
from llmkit.train.batching import epoch_permutation, process_micro_batches, step_indices, steps_per_epoch
from llmkit.train.losses import count_target_tokens, step_normalised_loss, token_cross_entropy_sum


def test_token_cross_entropy_sum_by_hand():
    # vocab 2; logits at t predict label at t+1. Position 0 predicts label[1]=1 with logits (0, ln 3):
    # p = 3/4 → loss ln(4/3). Position 1 predicts label[2] = -100 (ignored). Position 2 has no next token.
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0], [1.0, 2.0]]])
    labels = torch.tensor([[-100, 1, -100]])
    loss_sum, n = token_cross_entropy_sum(logits, labels)
    assert n.item() == 1
    assert loss_sum.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    # two targets: label[2]=0 from logits (5, 5) adds ln 2
    loss_sum, n = token_cross_entropy_sum(logits, torch.tensor([[-100, 1, 0]]))
    assert n.item() == 2 and loss_sum.item() == pytest.approx(math.log(4 / 3) + math.log(2), rel=1e-6)
    assert count_target_tokens(torch.tensor([[-100, 1, 0], [5, -100, 7]])) == 3


def test_step_normalised_loss_undoes_averaging():
    # 2 processes, 4 accumulation steps, 80 target tokens in the step: 10 * 2 * 4 / 80 = 1
    assert step_normalised_loss(torch.tensor(10.0), 80, 2, 4).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        step_normalised_loss(torch.tensor(1.0), 0, 1, 1)


def test_batching_partitions_the_global_batch():
    n, g = 50, 8
    assert steps_per_epoch(n, g) == 6
    first_epoch = [i for s in range(6) for i in step_indices(n, g, seed=1, step=s)]
    assert len(set(first_epoch)) == 48  # no repeats within an epoch; 2 dropped
    assert step_indices(n, g, 1, 6) == epoch_permutation(n, 1, 1)[:8]  # step 6 opens epoch 2
    assert step_indices(n, g, 1, 6) != step_indices(n, g, 1, 0)
    idx = list(range(8))
    # 2 processes × 2 micro-batches × 2 examples: chunk (a * world + r)
    assert process_micro_batches(idx, 2, 0, 2, 2) == [[0, 1], [4, 5]]
    assert process_micro_batches(idx, 2, 1, 2, 2) == [[2, 3], [6, 7]]
    one_proc = process_micro_batches(idx, 1, 0, 2, 4)
    assert sorted(sum(one_proc, [])) == idx
    with pytest.raises(ValueError):
        process_micro_batches(idx, 2, 0, 4, 2)
    with pytest.raises(ValueError, match="larger than the dataset"):
        step_indices(4, 8, 0, 0)


def test_checkpoint_publication_and_rotation(tmp_path):
    for step in (2, 4, 6):
        tmp = tmp_path / f"{ckpt.TMP_PREFIX}{step}"
        tmp.mkdir()
        (tmp / "w").write_text(str(step))
        ckpt.publish(tmp, tmp_path / f"checkpoint-{step}")
    (tmp_path / f"{ckpt.TMP_PREFIX}8").mkdir()  # interrupted write
    (tmp_path / "checkpoint-10").mkdir()  # renamed by hand, no marker
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert sorted(p.name for p in ckpt.remove_incomplete(tmp_path)) == [f"{ckpt.TMP_PREFIX}8", "checkpoint-10"]
    assert [p.name for p in ckpt.rotate(tmp_path, keep=2)] == ["checkpoint-2"]
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [4, 6]


def test_group_by_length_keeps_the_step_and_cuts_padding(code_examples, tokenizer, fresh_accelerate_state):
    from llmkit.models import ModelConfig, load_model
    from llmkit.train import Trainer, TrainerConfig

    def step_batches(group):
        cfg = TrainerConfig(
            output_dir="unused",
            per_device_batch_size=2,
            gradient_accumulation_steps=4,
            group_by_length=group,
            save_final_model=False,
        )
        model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
        return Trainer(cfg, model, tokenizer, code_examples[:24]).step_batches(0)

    plain, grouped = step_batches(False), step_batches(True)
    ids = lambda batches: sorted(
        tuple(row[m.bool()].tolist()) for b in batches for row, m in zip(b["input_ids"], b["attention_mask"])
    )
    assert ids(plain) == ids(grouped)  # the same examples
    slots = lambda batches: sum(b["input_ids"].numel() for b in batches)
    assert slots(grouped) < slots(plain)
