"""Token-budget batches (trainer.max_tokens_per_step): the pure planning functions by hand, the same loss tokens
as unpacked training, the same losses as a plain loop, exact resume after SIGKILL, DDP == 1 process; and the
loop options of issue 24 (fused AdamW on CUDA only, trainer.compile)."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
import torch
from conftest import TINY_CONFIG, load_weights, read_metrics, run_sft, subprocess_env

from llmkit.data.packing import collate_examples
from llmkit.data.sft import IGNORE_INDEX
from llmkit.errors import ConfigError
from llmkit.models import ModelConfig, load_model
from llmkit.train import Trainer, TrainerConfig
from llmkit.train.token_budget import (
    TokenBudgetSchedule,
    best_fit_decreasing,
    epoch_plan,
    group_rows_into_steps,
    process_rows,
)
from llmkit.train.trainer import adamw_options, supports_token_budget

# ----- the pure functions, by hand ------------------------------------------------------------------------


def test_best_fit_decreasing_by_hand():
    # lengths:     0  1  2  3  4  5  6  7
    lengths = [2, 9, 4, 6, 3, 5, 1, 7]
    # Longest first: 9 → row A (free 1); 7 → B (free 3); 6 → C (free 4); 5 → D (free 5);
    # 4 → tightest fit is C (free 4 → 0); 3 → B (free 3 → 0); 2 → D (free 5 → 3); 1 → A (free 1 → 0).
    assert best_fit_decreasing(lengths, 10) == [[1, 6], [7, 4], [3, 2], [5, 0]]
    # Equal lengths keep the given order: the epoch's shuffle decides which of them goes where.
    assert best_fit_decreasing([4, 4, 6], 10) == [[2, 0], [1]]
    assert best_fit_decreasing([4, 4, 6], 10, order=[1, 0, 2]) == [[2, 1], [0]]
    # Ties between rows with the same free space go to the row opened first.
    assert best_fit_decreasing([3, 3, 2], 5) == [[0, 2], [1]]
    with pytest.raises(ValueError, match="item 1 has 11 tokens, more than the row capacity 10"):
        best_fit_decreasing([3, 11], 10)


def test_best_fit_beats_next_fit_on_the_same_items():
    """Best fit decreasing fills rows that next-fit (Dynamic Pack's rule) leaves half empty."""
    from llmkit.data.packing import next_fit_packs

    lengths = [6, 4, 6, 4, 6, 4]
    assert len(best_fit_decreasing(lengths, 10)) == 3  # 6+4 three times
    assert len(next_fit_packs(lengths, 10)) == 4  # sorted ascending: 4+4, 4+6, 6, 6


def test_group_rows_into_steps_by_hand():
    assert group_rows_into_steps([6, 4, 5, 5, 3], 10) == [[0, 1], [2, 3], [4]]
    assert group_rows_into_steps([10, 10], 10) == [[0], [1]]
    assert group_rows_into_steps([3, 3, 3, 3], 10) == [[0, 1, 2], [3]]
    with pytest.raises(ValueError, match="row 1 has 11 tokens"):
        group_rows_into_steps([3, 11], 10)


def test_process_rows_by_hand():
    rows = [[0], [1, 2], [3], [4]]
    lengths = [5, 2, 2, 1, 6]  # row tokens: 5, 4, 1, 6 → dealt in the order rows 3, 0, 1, 2
    assert process_rows(rows, lengths, world_size=1, rank=0) == [[4], [0], [1, 2], [3]]
    assert process_rows(rows, lengths, world_size=2, rank=0) == [[4], [1, 2]]
    assert process_rows(rows, lengths, world_size=2, rank=1) == [[0], [3]]
    # 4 rows on 3 processes: everyone runs 2 micro-batches; two of them get an empty one
    shares = [process_rows(rows, lengths, world_size=3, rank=r) for r in range(3)]
    assert shares == [[[4], [3]], [[0], None], [[1, 2], None]]
    with pytest.raises(ValueError):
        process_rows(rows, lengths, world_size=2, rank=2)


def test_epoch_plan_is_pure_covers_every_example_once_and_respects_the_budgets():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (200,), generator=gen).tolist()
    plan = epoch_plan(lengths, seed=3, epoch=0, row_capacity=128, step_budget=512)
    assert plan == epoch_plan(lengths, seed=3, epoch=0, row_capacity=128, step_budget=512)  # a pure function
    assert plan != epoch_plan(lengths, seed=3, epoch=1, row_capacity=128, step_budget=512)  # each epoch reshuffles
    assert plan != epoch_plan(lengths, seed=4, epoch=0, row_capacity=128, step_budget=512)
    seen = [i for step in plan for row in step for i in row]
    assert sorted(seen) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 128 for step in plan for row in step)
    step_tokens = [sum(lengths[i] for row in step for i in row) for step in plan]
    assert all(t <= 512 for t in step_tokens)
    assert min(step_tokens[:-1]) > 512 - 128  # a step closes only when the next row does not fit
    rows = [row for step in plan for row in step]
    assert sum(lengths) / (len(rows) * 128) > 0.9  # best fit decreasing leaves little room unused


def test_schedule_counts_and_locates_steps_across_epochs():
    lengths = [30, 20, 50, 40, 10, 60, 25, 35]
    schedule = TokenBudgetSchedule(lengths, seed=1, row_capacity=64, step_budget=128)
    counts = [len(epoch_plan(lengths, 1, e, 64, 128)) for e in range(3)]
    assert [schedule.steps_in_epoch(e) for e in range(3)] == counts
    assert schedule.total_steps(3) == sum(counts)
    assert schedule.locate(0) == (0, 0)
    assert schedule.locate(counts[0]) == (1, 0)
    assert schedule.locate(counts[0] + counts[1] - 1) == (1, counts[1] - 1)
    assert schedule.step_rows(counts[0]) == epoch_plan(lengths, 1, 1, 64, 128)[0]
    assert schedule.epochs_done(counts[0]) == 1.0
    assert schedule.epochs_done(0) == 0.0


def test_loop_options():
    assert adamw_options(cuda=False, deepspeed=False) == {}  # CPU numerics untouched
    assert adamw_options(cuda=True, deepspeed=False) == {"fused": True}
    assert adamw_options(cuda=True, deepspeed=True) == {}
    with pytest.raises(ValueError, match="max_tokens_per_step .* must be at least packing_max_length"):
        TrainerConfig(max_tokens_per_step=100, packing_max_length=128)
    with pytest.raises(ValueError, match="max_tokens_per_step must be >= 0"):
        TrainerConfig(max_tokens_per_step=-1)


def test_only_trainers_with_the_base_batch_hooks_take_token_budgets():
    from llmkit.rl.grpo import GRPOTrainer
    from llmkit.safety.probe_training import ProbeTrainer
    from llmkit.unlearning.trainer import UnlearningTrainer

    class Logs(Trainer):
        def step_metrics(self):
            return {}

    class Declared(Trainer):
        supports_token_budget = True

        def compute_loss(self, model, batch):
            return super().compute_loss(model, batch)

    assert supports_token_budget(Trainer) and supports_token_budget(Logs) and supports_token_budget(Declared)
    assert not any(supports_token_budget(c) for c in (GRPOTrainer, ProbeTrainer, UnlearningTrainer))


# ----- the trainer in one process ---------------------------------------------------------------------------

BUDGET = dict(packing="padding_free", packing_max_length=128, max_tokens_per_step=384)


def budget_trainer(tmp_path, examples, tokenizer, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "tb"),
        max_steps=3,
        learning_rate=1e-3,
        lr_scheduler="constant",
        seed=5,
        save_final_model=False,
        **BUDGET,
    )
    settings.update(overrides)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    return Trainer(TrainerConfig(**settings), model, tokenizer, examples)


def test_refusals_name_the_setting(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    class OwnBatches(Trainer):
        def step_batches(self, step):
            return super().step_batches(step)

    with pytest.raises(
        ConfigError, match="max_tokens_per_step is not supported by OwnBatches .*overrides step_batches"
    ):
        OwnBatches(
            TrainerConfig(output_dir=str(tmp_path / "own"), **BUDGET),
            load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer)),
            tokenizer,
            code_examples,
        )
    with pytest.raises(
        ConfigError, match="max_tokens_per_step packs examples into rows: set trainer.packing: padding_free"
    ):
        budget_trainer(tmp_path, code_examples, tokenizer, packing="none")


def test_an_epoch_trains_on_the_same_loss_tokens_as_unpacked_training(
    tmp_path, code_examples, tokenizer, fresh_accelerate_state
):
    trainer = budget_trainer(tmp_path, code_examples, tokenizer, max_steps=-1)
    steps = trainer.steps_per_epoch
    assert trainer.total_steps == steps > 2
    packed = []
    for step in range(steps):
        batches = trainer.step_batches(step)
        assert sum(b["num_real_tokens"] for b in batches) <= 384  # the step's budget
        for b in batches:
            assert b["input_ids"].shape[1] <= 128  # one row of at most packing_max_length
            for labels in torch.split(b["labels"][0], b["seq_lengths"].tolist()):
                packed.append(tuple(labels.tolist()))
    # Unpacked, every example once (packing: none never drops an example when the batch divides the data)
    unpacked = collate_examples(code_examples, tokenizer.pad_token_id, "none")
    expected = [tuple(row[mask.bool()].tolist()) for row, mask in zip(unpacked["labels"], unpacked["attention_mask"])]
    assert Counter(packed) == Counter(expected)
    assert sum(sum(t != IGNORE_INDEX for t in labels[1:]) for labels in packed) == sum(
        ex.num_target_tokens for ex in code_examples
    )


def test_token_budget_training_equals_a_plain_loop_over_the_same_steps(
    tmp_path, code_examples, tokenizer, fresh_accelerate_state
):
    """1 process: each logged loss is Σ token losses / target tokens of the step's examples, unpacked."""
    from llmkit.train.losses import token_cross_entropy_sum

    trainer = budget_trainer(tmp_path, code_examples, tokenizer)
    lengths = [min(len(ex.input_ids), 128) for ex in code_examples]
    assert trainer.token_budget.plan(0) == epoch_plan(lengths, 5, 0, 128, 384)
    trainer.train()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert all(r["input_tokens"] <= 384 and r["padding_fraction"] == 0.0 for r in trainer.history)

    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))  # same seeded init
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    reference = []
    for step in range(3):
        examples = [code_examples[i] for row in trainer.token_budget.step_rows(step) for i in row]
        batch = collate_examples(examples, tokenizer.pad_token_id, "none")
        loss_sum, count = token_cross_entropy_sum(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
        (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        reference.append(float(loss_sum.detach() / count))
    assert losses == pytest.approx(reference, rel=1e-5)
    assert losses[0] != losses[-1]
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(trained[key], value, atol=1e-4, rtol=0)


def test_compile_option_is_wired_and_keeps_the_losses(
    tmp_path, code_examples, tokenizer, fresh_accelerate_state, monkeypatch
):
    """trainer.compile: true compiles the model in place. Inductor's code generation takes ~45 s on this CPU for
    a tiny model (same losses, measured), so the test traces with dynamo's eager backend: the same wiring."""
    from accelerate.state import AcceleratorState, GradientState

    def run(name, compile_model):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        cfg = TrainerConfig(
            output_dir=str(tmp_path / name),
            max_steps=2,
            learning_rate=1e-3,
            lr_scheduler="constant",
            per_device_batch_size=4,
            seed=3,
            save_final_model=False,
            compile=compile_model,
        )
        trainer = Trainer(
            cfg,
            load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer)),
            tokenizer,
            code_examples[:16],
        )
        trainer.train()
        compiled = trainer.accelerator.unwrap_model(trainer.model)._compiled_call_impl is not None
        return [r["loss"] for r in trainer.history if "loss" in r], compiled

    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="eager"))
    plain, plain_compiled = run("plain", False)
    compiled_losses, compiled = run("compiled", True)
    assert compiled and not plain_compiled
    assert compiled_losses == pytest.approx(plain, rel=1e-6)


# ----- subprocess runs: kill -9 resume, DDP --------------------------------------------------------------

ARGS = [
    "--config",
    str(TINY_CONFIG),
    "--trainer.max_steps",
    "7",
    "--trainer.save_steps",
    "2",
    "--trainer.save_total_limit",
    "0",
    "--data.max_length",
    "64",
    "--data.max_rows",
    "40",
    "--trainer.eval_steps",
    "0",
    "--trainer.learning_rate",
    "1e-2",
    "--trainer.packing",
    "padding_free",
    "--trainer.packing_max_length",
    "128",
    "--trainer.max_tokens_per_step",
    "384",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("token_budget") / "full"
    proc = run_sft(ARGS + ["--trainer.output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "token budget 384 tokens per step in rows of 128" in proc.stderr
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert rows[1]["epoch"] < 1 < rows[-1]["epoch"]  # checkpoint-2 is mid-epoch; the run crosses an epoch
    return out


def assert_same_run(a, b, rel, atol):
    la, lb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in lb] == list(range(1, 8))
    assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], rel=rel)
    assert [r["num_tokens"] for r in lb] == [r["num_tokens"] for r in la]
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=atol, rtol=0)


def test_sigkill_then_resume_replays_the_token_budget_steps(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    # Killed after step 3, it resumes mid-epoch from checkpoint-2 and replays steps 3..7 across the epoch boundary.
    killed = run_sft(ARGS + ["--trainer.output_dir", str(out)], env=subprocess_env(LLMKIT_FAULT_KILL_AFTER_STEP="3"))
    assert killed.returncode == -signal.SIGKILL
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    resumed = run_sft(ARGS + ["--trainer.output_dir", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-2 at step 2" in resumed.stderr
    assert_same_run(uninterrupted, out, rel=1e-6, atol=1e-6)
    # a different budget cannot resume this run
    other = run_sft(ARGS + ["--trainer.output_dir", str(out), "--resume", "--trainer.max_tokens_per_step", "512"])
    assert other.returncode == 2
    assert "it used trainer.max_tokens_per_step 384, this run uses 512" in other.stderr


@pytest.mark.distributed
def test_ddp_two_processes_equal_one_process_with_token_budgets(uninterrupted, tmp_path):
    """3 rows per step on 2 processes: one process runs an empty filler row; the losses do not change."""
    two = tmp_path / "two"
    proc = run_sft(ARGS + ["--trainer.output_dir", str(two)], accelerate_config="cpu_ddp.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: MULTI_CPU, 2 process(es), token budget 384" in proc.stderr
    assert_same_run(uninterrupted, two, rel=1e-4, atol=1e-5)


@pytest.mark.distributed
def test_ddp_with_the_chunked_loss_equals_one_process_with_the_plain_loss(uninterrupted, tmp_path):
    """trainer.loss_chunk_tokens under DDP: the output head's weight is used outside the model's forward (and is
    tied to the input embeddings); its gradient is still averaged across processes like any other."""
    two = tmp_path / "two-chunked"
    proc = run_sft(
        ARGS + ["--trainer.output_dir", str(two), "--trainer.loss_chunk_tokens", "50"],
        accelerate_config="cpu_ddp.yaml",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainer.loss_chunk_tokens 50: chunked and plain loss agree" in proc.stderr
    assert_same_run(uninterrupted, two, rel=1e-4, atol=1e-5)
