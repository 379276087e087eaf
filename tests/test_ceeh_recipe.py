"""The CEEH recipe on the tiny config: per-prompt state is checkpointed and a killed run resumes to the same state."""

from __future__ import annotations

import json
import sys

from conftest import REPO_ROOT, cpu_limited_run, read_metrics, subprocess_env

SCRIPT = REPO_ROOT / "recipes" / "ceeh" / "train.py"
CONFIG = REPO_ROOT / "recipes" / "ceeh" / "configs" / "tiny_cpu.yaml"


def run(out, *extra, env=None):
    cmd = [sys.executable, str(SCRIPT), "--config", str(CONFIG), "--trainer.output_dir", str(out), *extra]
    return cpu_limited_run(cmd, cwd=REPO_ROOT, env=env or subprocess_env(), capture_output=True, text=True, cpu_s=600)


def test_killed_run_resumes_to_the_same_per_prompt_state(tmp_path):
    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(tmp_path / "resumed", env=subprocess_env(LLMKIT_FAULT_KILL_AFTER_STEP="1"))
    assert killed.returncode != 0  # SIGKILL after step 1 (its checkpoint is written)
    resumed = run(tmp_path / "resumed", "--trainer.resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state_a = json.loads((tmp_path / "straight" / "ceeh_state.json").read_text())
    state_b = json.loads((tmp_path / "resumed" / "ceeh_state.json").read_text())
    assert state_a == state_b
    assert sum(h >= 0 for h in state_a["history"]) == 8  # 2 steps x 2 micro-batches x 2 prompts seen
    assert len(state_a["history"]) == 16  # the 4 held-out prompts have no training state
    rows_a, rows_b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_b] == [1, 2]
    assert rows_a[1]["loss"] == rows_b[1]["loss"] and rows_a[1]["completion_length"] == rows_b[1]["completion_length"]
    assert (tmp_path / "straight" / "rl_metrics.png").stat().st_size > 0
    report = json.loads((tmp_path / "straight" / "rl_eval.json").read_text())
    for part in ("base", "final"):
        assert {"accuracy", "length", "pass@1", "pass@2"} <= set(report[part])
    assert "nag" in report["final"]


def test_vllm_rollouts_with_the_in_memory_tiny_model_fail_in_one_line(tmp_path):
    """vLLM needs a folder or hub id; without vLLM installed the message says how to install it instead."""
    proc = run(tmp_path / "out", "--method.rollout_backend", "vllm")
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert "rollout_backend: vllm" in message and ("tiny-random-llama" in message or "pip install" in message)


def test_run_killed_mid_rollout_resumes_on_the_same_rollout(tmp_path):
    """num_iterations 2: step 2 reuses step 1's rollout. Killed after step 1, the run resumes from checkpoint-1's
    rollout buffer (completions, advantages, π_old) and RNG, and matches the uninterrupted run step for step."""
    extra = ("--method.grpo.num_iterations", "2", "--trainer.max_steps", "4", "--trainer.learning_rate", "0.02")
    straight = run(tmp_path / "straight", *extra)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(tmp_path / "resumed", *extra, env=subprocess_env(LLMKIT_FAULT_KILL_AFTER_STEP="1"))
    assert killed.returncode != 0
    assert (tmp_path / "resumed" / "checkpoint-1" / "process_state_0.pt").is_file()  # mid-rollout: buffer saved
    resumed = run(tmp_path / "resumed", *extra, "--trainer.resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows_a, rows_b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["iteration"] for r in rows_a] == [0, 1, 0, 1]
    for a, b in zip(rows_a, rows_b):
        assert a["loss"] == b["loss"] and a["ratio_deviation_max"] == b["ratio_deviation_max"], a["step"]
    assert rows_a[1]["ratio_deviation_max"] > 0  # the second pass is off-policy
    state_a = json.loads((tmp_path / "straight" / "ceeh_state.json").read_text())
    assert state_a == json.loads((tmp_path / "resumed" / "ceeh_state.json").read_text())
    assert sum(h >= 0 for h in state_a["history"]) == 8  # 2 rollouts × 4 prompts


def test_mbpp_prompts_with_the_code_reward_run_end_to_end(tmp_path):
    """The tiny model on MBPP prompts with the execution reward: rollouts are run in the sandbox (the random
    model writes no code, so every reward is 0) and the held-out pass rate is reported."""
    proc = run(
        tmp_path / "out",
        "--method.prompts",
        "mbpp",
        "--method.reward",
        "code_tests",
        "--method.num_prompts",
        "8",
        "--method.eval_prompts",
        "2",
        "--trainer.max_steps",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(tmp_path / "out")
    assert rows[0]["reward"] <= 0 + 1e-9 and rows[0]["accuracy"] == 0.0
    report = json.loads((tmp_path / "out" / "rl_eval.json").read_text())
    assert report["base"]["accuracy"] == 0.0 and "pass@1" in report["final"]


def test_code_reward_needs_problems_with_tests(tmp_path):
    proc = run(tmp_path / "out", "--method.reward", "code_tests")
    assert proc.returncode == 2 and "method.prompts: mbpp" in proc.stderr.strip().splitlines()[-1]


def test_bad_method_values_are_one_line_errors(tmp_path):
    proc = run(tmp_path / "out", "--method.mbpp_shown_tests", "-1")
    assert proc.returncode == 2 and "mbpp_shown_tests" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()  # nothing written
