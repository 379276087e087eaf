"""Bad input exits non-zero with one clear line naming the culprit; the CLI lists recipes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, SFT_SCRIPT, TINY_CONFIG, cpu_limited_run, subprocess_env


def sft_main(args):
    """Run the SFT recipe's main in-process; return (exit code, stderr lines)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sft_train", SFT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as info:
        module.main(["--config", str(TINY_CONFIG), *args])
    return info.value.code


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"prompt": "p", "response": "r"}


@pytest.mark.parametrize(
    "make_args, message",
    [
        (
            lambda tmp: ["--trainer.learning_rat", "1e-3"],
            "error: unknown config key 'trainer.learning_rat' (did you mean 'learning_rate'?)",
        ),
        (
            lambda tmp: ["--trainer.max_steps", "many"],
            "error: config key 'trainer.max_steps' must be an integer, got 'many'",
        ),
        (lambda tmp: ["--data.path", str(tmp / "absent.jsonl")], "error: data file not found: {tmp}/absent.jsonl"),
        (
            lambda tmp: [
                "--data.path",
                str(write_jsonl(tmp / "cols.jsonl", [{"question": "q", "response": "r"}])),
                "--data.columns",
                "{prompt: question2, response: response}",
            ],
            "error: {tmp}/cols.jsonl: column 'question2' (mapped to 'prompt') not found; columns are "
            "['question', 'response']",
        ),
        (
            lambda tmp: [
                "--data.path",
                str(write_jsonl(tmp / "empty.jsonl", [])),
                "--data.columns",
                "{prompt: prompt, response: response}",
            ],
            "error: dataset {tmp}/empty.jsonl is empty: no usable training rows (0 skipped)",
        ),
        (
            lambda tmp: [
                "--data.path",
                str(write_jsonl(tmp / "bad.jsonl", [GOOD, '{"prompt": "p", "response": ', GOOD])),
                "--data.columns",
                "{prompt: prompt, response: response}",
                "--data.on_bad_row",
                "error",
            ],
            "error: {tmp}/bad.jsonl:2: malformed JSON (Expecting value) (set data.on_bad_row: skip to skip such rows)",
        ),
    ],
    ids=["unknown-key", "wrong-type", "missing-file", "missing-column", "empty-dataset", "malformed-jsonl"],
)
def test_bad_input_one_clear_line(tmp_path, capsys, make_args, message, fresh_accelerate_state):
    code = sft_main(make_args(tmp_path) + ["--trainer.output_dir", str(tmp_path / "out")])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert err_lines == [message.format(tmp=tmp_path)]


def test_bad_config_file_through_the_real_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  epochs: 3\n")
    proc = cpu_limited_run(
        [sys.executable, "-m", "llmkit.cli", "train", "sft", "--config", str(bad)],
        120,
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: unknown config key 'trainer.epochs' (did you mean 'num_epochs'?)"
    )


def test_help_lists_recipes_and_configs():
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0
    assert "recipes/sft/configs/smollm2_codealpaca.yaml" in proc.stdout
    assert "cpu_ddp" in proc.stdout and "zero3" in proc.stdout


def test_env_reports_versions_and_capabilities():
    from llmkit.env import report

    text = report()
    for needle in ("torch:", "transformers:", "accelerate:", "gpu:", "vllm:", "deepspeed:", "flash_attention:"):
        assert needle in text
