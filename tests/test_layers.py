"""The layer contracts hold (`lint-imports`), they would catch a core → method import, the import circles stay
broken, and method tasks reach the evaluation engine by registering, not by being imported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cpu_limited_run, subprocess_env

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
METHODS = {"llmkit.rl", "llmkit.safety", "llmkit.unlearning", "llmkit.prompting", "llmkit.vision"}


def contracts() -> dict[str, dict]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["type"]: c for c in config["contracts"]}


def test_contracts_name_core_and_methods():
    by_type = contracts()
    assert set(by_type["forbidden"]["forbidden_modules"]) == METHODS
    assert {"llmkit.evaluation", "llmkit.train", "llmkit.data", "llmkit.generation"} <= set(
        by_type["forbidden"]["source_modules"]
    )
    assert set(by_type["independence"]["modules"]) == METHODS


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_lint_imports_passes():
    run = cpu_limited_run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, cpu_s=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_a_function_local_core_to_method_import_would_be_caught():
    """import-linter's graph (grimp) holds imports inside functions too, so a lazy import is no way around it."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("llmkit", cache_dir=None)
    # A real function-local import in the tree (the safety task factory's) is in the graph ...
    assert "llmkit.safety.task" in graph.find_modules_directly_imported_by("llmkit.safety")
    # ... and a core → method edge added to it is a path the forbidden contract reports.
    graph.add_import(importer="llmkit.evaluation.harness", imported="llmkit.safety.refusal")
    assert graph.find_shortest_chain(importer="llmkit.evaluation", imported="llmkit.safety.refusal", as_packages=True)


@pytest.mark.parametrize(
    "low, high",
    [
        ("llmkit.safety.probe_training", "llmkit.safety.gateway"),
        ("llmkit.unlearning.multimodal", "llmkit.unlearning.trainer"),
    ],
)
def test_former_import_circles_are_broken(low, high):
    """`high` imports `low`; `low` must not reach back to `high` (not even inside a function)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("llmkit", cache_dir=None)
    assert graph.find_shortest_chain(importer=low, imported=high) is None


def test_engine_does_not_import_safety_and_safety_registers_its_tasks():
    code = (
        "import sys\n"
        "from llmkit.evaluation.tasks import get_task, task_names\n"
        "from llmkit.errors import ConfigError\n"
        "assert 'llmkit.safety' not in sys.modules and 'safety' not in task_names()\n"
        "try:\n    get_task('safety')\nexcept ConfigError as e:\n    assert 'import llmkit.safety' in str(e), e\n"
        "else:\n    raise AssertionError('safety found before llmkit.safety was imported')\n"
        "import llmkit.safety\n"
        "assert {'safety', 'safety-jailbreak'} <= set(task_names())\n"
        "assert get_task('safety-jailbreak').name == 'safety-jailbreak'\n"
    )
    run = cpu_limited_run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, cpu_s=120
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_llmkit_eval_help_lists_method_tasks():
    run = cpu_limited_run(
        [sys.executable, "-m", "llmkit.cli", "eval", "--help"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        cpu_s=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "safety-jailbreak" in run.stdout and "humaneval" in run.stdout


def test_registering_a_taken_name_is_an_error():
    from llmkit.errors import ConfigError
    from llmkit.evaluation.tasks import register_task

    with pytest.raises(ConfigError, match="registered twice"):
        register_task("gsm8k", lambda data_path, timeout_s: None)


def test_every_top_level_module_is_in_a_layer():
    """A new llmkit module must be placed: core (in the forbidden contract), a method, or the app layer on top."""
    app = {"llmkit.cli", "llmkit.demo", "llmkit.launch"}  # the commands; they may import anything
    by_type = contracts()
    placed = set(by_type["forbidden"]["source_modules"]) | METHODS | app
    root = REPO_ROOT / "llmkit"
    found = {f"llmkit.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__"}
    found |= {f"llmkit.{p.name}" for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert found - placed == set(), "add these to [tool.importlinter] in pyproject.toml (core) or to a method list"
