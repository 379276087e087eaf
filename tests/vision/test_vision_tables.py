"""The experiment registry and the README-table script (benchmarks/vision_tables.py), moved out of run.py."""

import importlib.util
import json
from pathlib import Path

from llmkit.vision import run
from llmkit.vision.experiments import EXPERIMENTS, RUNNERS

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tables():
    spec = importlib.util.spec_from_file_location("vision_tables", REPO_ROOT / "benchmarks" / "vision_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_readme_replaces_only_its_block(tmp_path):
    tables = _tables()
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- results:dpc -->\nold\n<!-- /results:dpc -->\n\ntail\n")
    tables.update_readme("dpc", "new table", readme)
    tables.update_readme("dhkd", "other", readme)
    text = readme.read_text()
    assert "new table" in text and "old" not in text and text.index("tail") < text.index("other")
    assert run.mean_std([1.0, 3.0]) == "2.0 ± 1.4"


def test_collect_copies_each_table_under_its_name(tmp_path):
    tables = _tables()
    folder = tmp_path / "outputs" / "openset-al-hard"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"experiment": "openset-al", "name": "openset-al-hard"}))
    (folder / "table.md").write_text("| a |\n")
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n<!-- results:openset-al-hard -->\nold\n<!-- /results:openset-al-hard -->\n")
    assert tables.collect(tmp_path / "outputs", readme) == ["openset-al-hard"]
    assert "| a |" in readme.read_text() and "old" not in readme.read_text()


def test_every_experiment_is_one_module_with_the_old_names():
    assert EXPERIMENTS == (
        "dpc",
        "openset-al",
        "dhkd",
        "l2d",
        "cap",
        "cdcr",
        "ccmn",
        "mogd",
        "lewis",
        "flain",
        "fairfal",
        "rdd",
        "rdd-seg",
        "optimum-shift",
    )
    assert run.RUNNERS is RUNNERS and all(callable(f) for f in RUNNERS.values())
    assert {f.__module__.rsplit(".", 1)[1] for f in RUNNERS.values()} == {e.replace("-", "_") for e in EXPERIMENTS}


def test_library_never_writes_the_readme():
    source = "".join(p.read_text() for p in (REPO_ROOT / "llmkit" / "vision").rglob("*.py"))
    assert "README.md" not in source.replace("llmkit/vision/README.md", "")


def test_run_writes_table_and_results_without_touching_the_readme(tmp_path):
    before = (REPO_ROOT / "llmkit" / "vision" / "README.md").read_text()
    outputs = run.main(["optimum-shift", "--seeds", "0", "--labels", "30", "--out", str(tmp_path)])
    assert set(outputs) == {"optimum-shift"}
    assert (tmp_path / "table.md").read_text().startswith("Optimum shifting")
    assert json.loads((tmp_path / "results.json").read_text())["name"] == "optimum-shift"
    assert (REPO_ROOT / "llmkit" / "vision" / "README.md").read_text() == before


def test_tables_script_runs_the_experiment_and_writes_its_block(tmp_path, monkeypatch):
    tables = _tables()
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n<!-- results:optimum-shift -->\nold\n<!-- /results:optimum-shift -->\n")
    monkeypatch.setattr(tables, "README", readme)
    tables.main(["optimum-shift", "--seeds", "0", "--labels", "30", "--out", str(tmp_path / "out")])
    text = readme.read_text()
    assert "old" not in text and "Optimum shifting" in text
    assert "Command: `python -m llmkit.vision.run optimum-shift --seeds 0 --labels 30 --out " in text
