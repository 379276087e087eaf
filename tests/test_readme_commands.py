"""Every command in the ```bash blocks of README.md and recipes/*/README.md is checked as written, top to bottom.

For each line: the program and verb exist; named files (configs, scripts, accelerate configs) exist; a
recipe's `--config FILE --section.key value` overrides parse into its typed config (the recipe's own
`parse_recipe_args`, stopped before anything runs); `llmkit eval`/`select` options parse and the task
exists; and a folder that `llmkit export/serve/eval --model` reads is made by an earlier command of the
same file; and a training run does not write into a folder an earlier command filled unless it resumes or
overwrites. The README's Training block (tiny configs) is also run line by line (≈ 1 min, marked distributed);
the recipes' tiny configs run in their own tests and the tiny end-to-end demo in `tests/test_demo.py`.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from llmkit.config import load_config, split_config_arg
from llmkit.errors import LlmkitError
from llmkit.recipe import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted(REPO_ROOT.glob("recipes/*/README.md"))]
VERBS = set(re.findall(r'add_parser\(\s*"(\w+)"', (REPO_ROOT / "llmkit" / "cli.py").read_text()))
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (REPO_ROOT / "Makefile").read_text(), re.M))
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def bash_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv) of each command in the ```bash blocks: continuations joined, comments and env
    prefixes dropped."""
    out, block, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            block = line.strip() == "```bash" if not block else False
            continue
        if not block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        while argv and _ENV.match(argv[0]):
            argv = argv[1:]
        if argv:
            out.append((start, argv))
    return out


class _Parsed(Exception):
    """Raised by the stand-in parse_recipe_args once the config has parsed: nothing else runs."""

    def __init__(self, cfg):
        super().__init__("parsed")
        self.cfg = cfg


_modules: dict[Path, object] = {}


def parse_script(script: Path, args: list[str]):
    """The typed config the script's main() builds from `args` (None for scripts without parse_recipe_args)."""
    assert script.is_file(), f"no such script: {script.relative_to(REPO_ROOT)}"
    if script not in _modules:
        spec = importlib.util.spec_from_file_location(f"_readme_{script.parent.name}_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _modules[script] = module
    module = _modules[script]
    real = getattr(module, "parse_recipe_args", None)
    if real is None or not hasattr(module, "main"):
        return None

    def stop(cls, argv=None):
        raise _Parsed(real(cls, argv))

    module.parse_recipe_args = stop
    try:
        module.main(args)
    except _Parsed as parsed:
        return parsed.cfg
    finally:
        module.parse_recipe_args = real
    raise AssertionError(f"{script.name} ran without parsing a config")


def output_dir_of(cfg) -> str | None:
    """Where a parsed recipe config writes (trainer.output_dir or run.output_dir)."""
    for section in ("trainer", "run"):
        if hasattr(cfg, section) and hasattr(getattr(cfg, section), "output_dir"):
            return str(getattr(getattr(cfg, section), "output_dir")).rstrip("/")
    return None


def check_paths(argv: list[str]) -> None:
    """Every argument naming a repository file (recipes/, accelerate_configs/, benchmarks/, tests/) exists."""
    for arg in argv:
        if re.match(r"^(recipes|accelerate_configs|benchmarks|tests)/", arg):
            assert (REPO_ROOT / arg).exists(), f"no such file: {arg}"


def check_made(folder: str, made: set[str], what: str) -> None:
    """`folder` (an outputs/... path) is written by an earlier command of the same file."""
    if folder.startswith("outputs/"):
        assert folder.rstrip("/") in made, (
            f"{what} reads {folder}, which no earlier command makes (made: {sorted(made)})"
        )


def check_not_reused(cfg, made: set[str]) -> None:
    """A training run does not write into a folder an earlier command filled unless it says so (--resume or
    --trainer.overwrite_output_dir): the trainer refuses that, so the README would stop there."""
    trainer = getattr(cfg, "trainer", None)
    if trainer is None or not hasattr(trainer, "overwrite_output_dir"):
        return
    folder = output_dir_of(cfg)
    assert folder not in made or trainer.resume or trainer.overwrite_output_dir, (
        f"writes into {folder}, which an earlier command already filled; the trainer refuses that without "
        "--resume or --trainer.overwrite_output_dir"
    )


def check_command(argv: list[str], made: set[str]) -> None:
    """Check one command; add the folders it writes to `made`."""
    check_paths(argv)
    program = argv[0]
    if program in ("source", "pip", "pytest", "bash", "sha256sum"):
        return
    if program == "make":
        assert all(t in MAKE_TARGETS for t in argv[1:]), f"unknown make target in {argv}"
        return
    if program == "accelerate":
        assert argv[1] == "launch"
        script = next(a for a in argv if a.endswith(".py"))
        rest = argv[argv.index(script) + 1 :]
        cfg = parse_script(REPO_ROOT / script, rest)
    elif program == "python":
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
            return
        cfg = parse_script(REPO_ROOT / argv[1], argv[2:])
    elif program == "llmkit":
        verb = argv[1]
        assert verb in VERBS, f"llmkit has no verb '{verb}' (verbs: {sorted(VERBS)})"
        if verb == "train":
            rest, skip = [], False
            for a in argv[3:]:
                if skip:
                    skip = False
                elif a in ("--accelerate_config", "--num_processes"):
                    skip = True
                else:
                    rest.append(a)
            if "--help" in rest:
                assert (REPO_ROOT / "recipes" / argv[2] / "train.py").is_file()
                return
            cfg = parse_script(REPO_ROOT / "recipes" / argv[2] / "train.py", rest)
        elif verb == "run":
            cfg = parse_script(REPO_ROOT / "recipes" / argv[2] / "run.py", argv[3:])
        elif verb in ("eval", "select"):
            cfg = parse_llmkit_options(verb, argv[2:])
            if verb == "eval":
                check_made(cfg.model, made, "llmkit eval --model")
            made.add(cfg.output_dir.rstrip("/"))
            return
        elif verb == "export":
            check_made(argv[2], made, "llmkit export")
            made.add(argv[3].rstrip("/"))
            return
        elif verb == "serve":
            check_made(argv[2], made, "llmkit serve")
            return
        else:
            return
    else:
        raise AssertionError(f"unknown program '{program}'")
    if cfg is not None and output_dir_of(cfg):
        check_not_reused(cfg, made)
        made.add(output_dir_of(cfg))
    for flag in ("--out", "--root"):  # evaluate.py / grid.py write here
        if flag in argv:
            made.add(argv[argv.index(flag) + 1].rstrip("/"))


def parse_llmkit_options(verb: str, args: list[str]):
    """`llmkit eval` / `llmkit select` options → their typed config (the task must exist)."""
    path, overrides = split_config_arg(args)
    if verb == "select":
        from llmkit.data.selection.run import SelectConfig

        return load_config(SelectConfig, path, overrides)
    from llmkit.cli import import_method_tasks
    from llmkit.evaluation.harness import EvalConfig
    from llmkit.evaluation.tasks import task_names

    import_method_tasks()
    cfg = load_config(EvalConfig, path, overrides)
    assert cfg.task in task_names(), f"unknown task {cfg.task}"
    return cfg


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_readme_commands_run_as_written(doc: Path):
    commands = bash_commands(doc)
    assert commands, f"{doc} has no bash block"
    made: set[str] = set()
    for number, argv in commands:
        try:
            check_command(argv, made)
        except (AssertionError, LlmkitError, SystemExit, StopIteration) as exc:
            pytest.fail(f"{doc.relative_to(REPO_ROOT)}:{number}: {' '.join(argv)}\n  -> {type(exc).__name__}: {exc}")


def test_bash_commands_parser(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text(
        "text\n```bash\nA=1 llmkit env   # comment\nllmkit eval \\\n  --task 'humaneval'\n```\n```python\nx = 1\n```\n"
    )
    assert bash_commands(doc) == [(3, ["llmkit", "env"]), (4, ["llmkit", "eval", "--task", "humaneval"])]


def test_export_of_a_folder_nothing_made_fails():
    with pytest.raises(AssertionError, match="no earlier command makes"):
        check_command(["llmkit", "export", "outputs/never-made", "outputs/x"], set())


# Lines of the README's Training block that this machine cannot run as written, and where they are run instead.
_NOT_RUN_HERE = {
    "single_gpu.yaml": "needs a CUDA device",
    "zero3.yaml": "the same launch is tests/test_distributed.py::test_deepspeed_on_cpu_trains_saves_and_resumes[zero3]",
}


def section_commands(path: Path, heading: str) -> list[tuple[int, list[str]]]:
    """The bash commands of `path` that sit under the Markdown heading `heading` (up to the next heading)."""
    lines = path.read_text().splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [(n, argv) for n, argv in bash_commands(path) if start < n <= end]


def as_subprocess(argv: list[str]) -> list[str]:
    """A README command line as this test's interpreter runs it (`python`, `llmkit`, `accelerate launch`)."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "llmkit":
        return [str(Path(sys.executable).parent / "llmkit"), *argv[1:]]
    if argv[:2] == ["accelerate", "launch"]:
        return [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
    raise AssertionError(f"no runner for {argv[0]}")


@pytest.mark.distributed
def test_readme_training_block_runs_top_to_bottom(tmp_path):
    """The README's Training block, run line by line as a newcomer would from a fresh clone (in a scratch folder
    that sees the repository's recipes and launch configs), except the lines listed in _NOT_RUN_HERE."""
    from conftest import cpu_limited_run, read_metrics, subprocess_env

    for name in ("recipes", "accelerate_configs"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    commands = section_commands(REPO_ROOT / "README.md", "## Training")
    ran = []
    for number, argv in commands:
        if any(key in " ".join(argv) for key in _NOT_RUN_HERE):
            continue
        proc = cpu_limited_run(
            as_subprocess(argv), 300, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True
        )
        assert proc.returncode == 0, f"README.md:{number}: {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        ran.append((argv, proc.stdout + proc.stderr))
    assert len(ran) == len(commands) - len(_NOT_RUN_HERE), "a line listed in _NOT_RUN_HERE left the README"
    out = tmp_path / "outputs"
    # the first line trained 5 steps; the resume line continued the same folder to 8
    assert [row["step"] for row in read_metrics(out / "sft-tiny")][-1] == 8
    assert [row["step"] for row in read_metrics(out / "sft-tiny-py")][-1] == 5
    assert (out / "sft-tiny-ddp" / "adapter_config.json").is_file() or (out / "sft-tiny-ddp" / "config.json").is_file()
    merged = out / "sft-tiny-merged"
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    help_text = next(text for argv, text in ran if argv[-1] == "--help")
    assert "--trainer.max_steps" in help_text
