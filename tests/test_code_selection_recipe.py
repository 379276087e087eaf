"""The code-selection recipe end to end on the tiny config: held-out split, selection, packed training."""

from __future__ import annotations

import json
import sys

from conftest import REPO_ROOT, cpu_limited_run, read_metrics, subprocess_env

SCRIPT = REPO_ROOT / "recipes" / "code_selection" / "train.py"
CONFIG = REPO_ROOT / "recipes" / "code_selection" / "configs" / "tiny_cpu.yaml"


def run_recipe(tmp_path, name, *extra):
    out = tmp_path / name
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(CONFIG),
        "--trainer.output_dir",
        str(out),
        "--method.selection.cache_dir",
        str(tmp_path / "cache"),
        *extra,
    ]
    proc = cpu_limited_run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, cpu_s=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cdas_arm_and_full_arm_share_the_held_out_rows(tmp_path):
    cdas = run_recipe(tmp_path, "cdas")
    full = run_recipe(
        tmp_path,
        "full",
        "--method.select",
        "false",
        "--trainer.packing",
        "padding_free",
        "--method.eval_tasks",
        "[humaneval]",
        "--method.eval_limit",
        "2",
        "--method.eval_max_new_tokens",
        "8",
    )
    held_cdas, held_full = rows(cdas / "selection" / "heldout.jsonl"), rows(full / "selection" / "heldout.jsonl")
    assert held_cdas == held_full and len(held_cdas) == 12  # 12.5% of 96
    pool = rows(cdas / "selection" / "pool.jsonl")
    assert len(pool) == 84
    held_keys = {(r["instruction"], r["output"]) for r in held_cdas}
    subset = rows(cdas / "selection" / "subset.jsonl")
    summary = json.loads((cdas / "selection" / "selection.json").read_text())
    assert len(subset) == summary["selected"] == sum(c["kept"] for c in summary["clusters"].values()) > 0
    assert not held_keys & {(r["instruction"], r["output"]) for r in subset}  # never train on eval rows
    metrics_cdas, metrics_full = read_metrics(cdas), read_metrics(full)
    assert len(metrics_cdas) == 4
    assert all(r["examples_per_row"] > 1 for r in metrics_cdas)  # Dynamic Pack packed examples together
    assert all(r["padding_fraction"] == 0.0 for r in metrics_full)  # padding-free: no pad at all
    assert (cdas / "model.safetensors").exists() or any(cdas.glob("*.safetensors"))
    # the trained model was scored by the harness (a random tiny model passes nothing)
    results = json.loads((full / "eval-humaneval" / "results.json").read_text())
    assert results["num_problems"] == 2 and results["metrics"]["pass@1"] == 0.0
    assert not (cdas / "eval-humaneval").exists()  # no eval_tasks, no harness run
