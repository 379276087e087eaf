"""Every recipe folder runs with a verb the CLI lists: `train.py` folders with `llmkit train`, `run.py` folders
(experiments, no training) with `llmkit run`; the wrong verb says which one to use."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT, cpu_limited_run, subprocess_env

from llmkit.recipe import RECIPES_DIR, list_recipes, recipe_verb


def llmkit(*args: str) -> subprocess.CompletedProcess:
    return cpu_limited_run(
        [sys.executable, "-m", "llmkit.cli", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        cpu_s=300,
    )


def test_every_recipe_folder_has_a_verb():
    folders = {p.name for p in RECIPES_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert {name: recipe_verb(name) for name in folders if recipe_verb(name) is None} == {}
    assert recipe_verb("sft") == "train" and recipe_verb("active_prompting") == "run"
    assert "active_prompting" in list_recipes("run") and "active_prompting" not in list_recipes("train")


def test_help_lists_training_and_experiment_recipes():
    run = llmkit("--help")
    assert run.returncode == 0, run.stderr
    assert "llmkit run NAME" in run.stdout and "active_prompting" in run.stdout and "  sft" in run.stdout


def test_llmkit_run_active_prompting_help_lists_its_keys():
    run = llmkit("run", "active_prompting", "--help")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--apie.pool_size" in run.stdout and "--run.experiments" in run.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("train", "active_prompting", "--config", "x.yaml"),
            "error: recipe 'active_prompting' has no training step; run it with: llmkit run active_prompting "
            "--config FILE",
        ),
        (("run", "sft"), "error: unknown experiment 'sft'; it trains: llmkit train sft; available: "),
    ],
)
def test_wrong_verb_names_the_right_one(args, message):
    run = llmkit(*args)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-1000:]
