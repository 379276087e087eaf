"""Resume after SIGKILL: same losses at every later step and same final weights as an uninterrupted run."""

from __future__ import annotations

import signal

import pytest
import torch
from conftest import TINY_CONFIG, load_weights, read_metrics, run_sft, subprocess_env

ARGS = [
    "--config",
    str(TINY_CONFIG),
    "--trainer.max_steps",
    "6",
    "--trainer.save_steps",
    "2",
    "--trainer.save_total_limit",
    "0",
    "--data.max_length",
    "64",
    "--data.max_rows",
    "40",
    "--trainer.per_device_batch_size",
    "2",
    "--trainer.eval_steps",
    "0",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "full"
    proc = run_sft(ARGS + ["--trainer.output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_same_run(a, b):
    la, lb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in lb] == list(range(1, 7))
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-6)
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0)


def test_sigkill_after_step_then_resume(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    killed = run_sft(ARGS + ["--trainer.output_dir", str(out)], env=subprocess_env(LLMKIT_FAULT_KILL_AFTER_STEP="5"))
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]  # step 5 was logged, not checkpointed
    resumed = run_sft(ARGS + ["--trainer.output_dir", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "checkpoint-4 at step 4" in resumed.stderr
    assert_same_run(uninterrupted, out)


def test_interrupted_checkpoint_write_is_never_loaded(uninterrupted, tmp_path):
    out = tmp_path / "torn"
    killed = run_sft(ARGS + ["--trainer.output_dir", str(out)], env=subprocess_env(LLMKIT_FAULT_KILL_IN_SAVE="4"))
    assert killed.returncode == -signal.SIGKILL
    torn = out / ".tmp-checkpoint-4"
    assert torn.is_dir() and (torn / "model.safetensors").is_file() and not (torn / "COMPLETE").exists()
    resumed = run_sft(ARGS + ["--trainer.output_dir", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed incomplete checkpoint" in resumed.stderr
    assert "checkpoint-2 at step 2" in resumed.stderr
    assert not torn.exists()
    assert_same_run(uninterrupted, out)


def test_lora_resume_with_dropout_matches_uninterrupted(tmp_path):
    """LoRA checkpoints hold only the adapter; RNG states make dropout replay exactly after resume."""
    from safetensors.torch import load_file

    lora = [
        "--model.lora.r",
        "4",
        "--model.lora.alpha",
        "8",
        "--model.lora.dropout",
        "0.1",
        "--trainer.learning_rate",
        "1e-2",
    ]
    full, killed_dir = tmp_path / "full", tmp_path / "killed"
    assert run_sft(ARGS + lora + ["--trainer.output_dir", str(full)]).returncode == 0
    killed = run_sft(
        ARGS + lora + ["--trainer.output_dir", str(killed_dir)], env=subprocess_env(LLMKIT_FAULT_KILL_AFTER_STEP="3")
    )
    assert killed.returncode == -signal.SIGKILL
    ckpt_weights = load_file(str(killed_dir / "checkpoint-2" / "model.safetensors"))
    assert ckpt_weights and all("lora_" in k for k in ckpt_weights)  # adapter only, no frozen base
    resumed = run_sft(ARGS + lora + ["--trainer.output_dir", str(killed_dir), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    la, lb = read_metrics(full), read_metrics(killed_dir)
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-6)
    wa = load_file(str(full / "adapter_model.safetensors"))
    wb = load_file(str(killed_dir / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and len(wa) > 0
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0)
