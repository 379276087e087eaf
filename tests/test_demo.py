"""`llmkit demo --tiny`: every stage of the demo (select, pack + train, merge, harness, serve, report) runs."""

import json
import math
import re

from llmkit.demo import TINY, paired_table, run_demo


def test_tiny_demo_runs_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    report = run_demo(str(tmp_path / "demo"), tiny=True)
    out = tmp_path / "demo"
    text = report.read_text()
    # selection wrote a subset, and the report counts it
    subset = (out / "train" / "selection" / "subset.jsonl").read_text().splitlines()
    assert re.search(rf"selected {len(subset)} of \d+ rows", text)
    # training logged finite eval losses at steps 1 and 2
    evals = [
        json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line
    ]
    assert [e["step"] for e in evals] == [1, 2] and all(math.isfinite(e["eval_loss"]) for e in evals)
    assert (out / "merged" / "config.json").is_file()
    # both harness runs scored the same slice; the paired counts add up to it
    for name in ("eval-base", "eval-tuned"):
        results = json.loads((out / name / "results.json").read_text())
        assert results["num_problems"] == TINY.eval_limit
    rows, counts = paired_table(out / "eval-base", out / "eval-tuned")
    assert sum(counts.values()) == TINY.eval_limit and len(rows) == 2 + TINY.eval_limit
    # the plots exist and are embedded by relative path; the served answer is in the report
    assert "![training loss](train/training_loss.png)" in text and (out / "train" / "training_loss.png").is_file()
    assert "![pass@1](pass_at_1.png)" in text and (out / "pass_at_1.png").is_file()
    assert re.search(r"http://127\.0\.0\.1:\d+/v1/chat/completions", text)


def test_paired_table_counts(tmp_path):
    def write(folder, passed):
        folder.mkdir()
        (folder / "samples.jsonl").write_text(
            "".join(json.dumps({"id": f"P/{i}", "completions": [{"passed": p}]}) + "\n" for i, p in enumerate(passed))
        )

    write(tmp_path / "b", [True, True, False, False])
    write(tmp_path / "t", [True, False, True, False])
    rows, counts = paired_table(tmp_path / "b", tmp_path / "t")
    assert counts == {"both": 1, "base only": 1, "tuned only": 1, "neither": 1}
    assert rows[2] == "| P/0 | pass | pass |" and rows[3] == "| P/1 | pass | fail |"
