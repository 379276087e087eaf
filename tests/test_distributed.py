"""Multi-process runs on CPU through `accelerate launch`: DDP equivalence and DeepSpeed ZeRO-2/3."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import TINY_CONFIG, load_weights, read_metrics, run_sft

pytestmark = pytest.mark.distributed

BASE = [
    "--config",
    str(TINY_CONFIG),
    "--trainer.max_steps",
    "5",
    "--trainer.eval_steps",
    "0",
    "--data.max_length",
    "64",
    "--data.max_rows",
    "48",
    "--trainer.learning_rate",
    "1e-2",
]


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    """1 process × 2 per device × 4 accumulation = global batch 8."""
    one = tmp_path_factory.mktemp("reference") / "one"
    p1 = run_sft(
        BASE
        + [
            "--trainer.output_dir",
            str(one),
            "--trainer.per_device_batch_size",
            "2",
            "--trainer.gradient_accumulation_steps",
            "4",
            "--trainer.save_steps",
            "0",
        ]
    )
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert "distributed: NO, 1 process(es), global batch 8" in p1.stderr
    return one


def test_ddp_two_processes_equal_one_process_same_global_batch(tmp_path, one_process_reference):
    one = one_process_reference
    two = tmp_path / "two"
    # global batch 8 both ways: 1 process × 2 per device × 4 accumulation; 2 processes × 2 × 2.
    p2 = run_sft(
        BASE
        + [
            "--trainer.output_dir",
            str(two),
            "--trainer.per_device_batch_size",
            "2",
            "--trainer.gradient_accumulation_steps",
            "2",
            "--trainer.save_steps",
            "0",
        ],
        accelerate_config="cpu_ddp.yaml",
    )
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "distributed: MULTI_CPU, 2 process(es), global batch 8" in p2.stderr  # really DDP
    l1, l2 = read_metrics(one), read_metrics(two)
    assert len(l1) == len(l2) == 5
    assert [r["loss"] for r in l2] == pytest.approx([r["loss"] for r in l1], rel=1e-4)
    assert [r["num_tokens"] for r in l2] == [r["num_tokens"] for r in l1]
    w1, w2 = load_weights(one), load_weights(two)
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_on_cpu_trains_saves_and_resumes(tmp_path, stage, one_process_reference):
    out = tmp_path / stage
    args = BASE + [
        "--trainer.output_dir",
        str(out),
        "--trainer.per_device_batch_size",
        "2",
        "--trainer.gradient_accumulation_steps",
        "2",
        "--trainer.save_steps",
        "5",
    ]
    first = run_sft(args, accelerate_config=f"{stage}.yaml")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "distributed: DEEPSPEED, 2 process(es), global batch 8" in first.stderr
    reference = [r["loss"] for r in read_metrics(one_process_reference)]
    assert [r["loss"] for r in read_metrics(out)] == pytest.approx(reference, rel=1e-4)
    shards = list((out / "checkpoint-5").rglob("*optim_states.pt"))
    assert len(shards) == 2, "expected one DeepSpeed optimizer shard per process"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]
    # The checkpoint loads: resume from it and take one more step.
    second = run_sft(args + ["--resume", "--trainer.max_steps", "6"], accelerate_config=f"{stage}.yaml")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "checkpoint-5 at step 5" in second.stderr
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)  # the final save is a plain HF folder
    weights = load_weights(out)
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert model.config.num_hidden_layers == 2


def test_unsynchronised_multi_process_launch_is_refused(tmp_path):
    """FSDP without CUDA: accelerate would start 2 unwrapped processes that never sync gradients."""
    proc = run_sft(
        BASE + ["--trainer.output_dir", str(tmp_path / "fsdp")],
        accelerate_config="fsdp2.yaml",
        launch_args=("--num_processes", "2"),
    )
    assert proc.returncode != 0
    assert (
        "error: 2 processes were launched but accelerate set up no data parallelism (FSDP needs CUDA devices)"
        in proc.stderr
    )
