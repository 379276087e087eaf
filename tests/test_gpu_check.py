"""benchmarks/gpu_check.sh: the wheel picker and the table by hand, and the whole CPU tiny mode end to end."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, subprocess_env

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import gpu_check  # noqa: E402

ARM_ROWS = [
    "plain packed loop",
    "llmkit none",
    "llmkit dynamic",
    "llmkit padding_free",
    "llmkit token-budget",
    "llmkit token-budget + chunked loss",
    "transformers Trainer",
]


def test_pick_wheel_takes_this_pythons_build_or_a_universal_one():
    files = [
        "xxhash-4.1.0-cp311-cp311-manylinux2014_x86_64.whl",
        "xxhash-4.1.0-cp312-cp312-manylinux2014_x86_64.whl",
        "multiprocess-0.70.19-py311-none-any.whl",
        "multiprocess-0.70.19-py312-none-any.whl",
        "trl-1.16.0-py3-none-any.whl",
    ]
    assert gpu_check.pick_wheel(files, "xxhash", (3, 11)) == files[0]
    assert gpu_check.pick_wheel(files, "multiprocess", (3, 12)) == files[3]
    assert gpu_check.pick_wheel(files, "trl", (3, 10)) == files[4]
    assert gpu_check.pick_wheel(files, "xxhash", (3, 13)) is None  # no build for that Python: the arm says so
    assert gpu_check.pick_wheel(files, "datasets", (3, 11)) is None


def test_table_by_hand():
    plain = gpu_check.ArmResult(
        "plain packed loop",
        steps=2,
        target_tokens=1000,
        real_tokens=2000,
        seconds=2.0,
        peak_gib=1.5,
        extra={"params": 1_000_000, "tokens_per_step": 1000},
    )
    slow = gpu_check.ArmResult(
        "llmkit none",
        steps=2,
        target_tokens=500,
        real_tokens=900,
        seconds=2.0,
        extra={"params": 1_000_000, "tokens_per_step": 450},
    )
    skipped = gpu_check.ArmResult("TRL SFTTrainer(packing=True)", note="skipped: trl/datasets not importable")
    table = gpu_check.format_table([plain, slow, skipped], peak=1e9)
    rows = table.splitlines()
    # 6 × 1e6 parameters × 1000 real tok/s = 6e9 FLOP/s over a 1e9 peak: 600%; then 450 tok/s: 270%
    assert rows[2] == "| plain packed loop | 2 | 1,000 | 500 | 1,000 | 600.0% | 1.50 | 1.00× |  |"
    assert rows[3] == "| llmkit none | 2 | 450 | 250 | 450 | 270.0% | – | 0.50× |  |"
    assert rows[4].startswith("| TRL SFTTrainer(packing=True) | 0 | – |") and "skipped" in rows[4]
    assert "| – |" in gpu_check.format_table([slow], peak=None)  # no plain loop, no peak: '–'


@pytest.mark.benchmark
def test_cpu_tiny_mode_prints_and_records_every_arm(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    env = subprocess_env(PYTHON=sys.executable)
    proc = subprocess.run(
        [
            "bash",
            str(REPO_ROOT / "benchmarks" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--results",
            str(results),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "## GPU check (cpu): tiny" in text and "- machine: CPU" in text
    assert "- command: `bash benchmarks/gpu_check.sh --device cpu --tiny --steps 2 --warmup 1 --results" in text
    assert "The GPU table has not been run yet" in text
    arms = ARM_ROWS + (["TRL SFTTrainer(packing=True)"] if importlib.util.find_spec("trl") else [])
    for arm in arms:
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} |"))
        assert row.split("|")[2].strip() == "1", row  # one timed step (the first is warm-up), no failure
    plain = next(line for line in text.splitlines() if line.startswith("| plain packed loop |"))
    assert "| 1.00× |" in plain
    assert "token-budget | 1 |" in text and "attention llmkit_per_example_sdpa" in text
    assert os.path.getsize(results) < 10_000
