"""How a recipe is launched (plain Python or `accelerate launch`) and how a failed launch is reported.

Shared by `llmkit train` and `llmkit demo`; it lives below both so neither imports the other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from llmkit.errors import ConfigError
from llmkit.recipe import ACCELERATE_CONFIGS_DIR, RECIPES_DIR, list_recipes


def launch_command(recipe: str, accelerate_config: str | None, num_processes: int | None, rest: list[str]) -> list[str]:
    """The command that runs `recipe`: plain Python, or `accelerate launch` with a named config."""
    script = RECIPES_DIR / recipe / "train.py"
    if not script.is_file():
        raise ConfigError(f"unknown recipe '{recipe}'; available: {', '.join(list_recipes()) or 'none'}")
    if accelerate_config is None:
        return [sys.executable, str(script), *rest]
    config_path = ACCELERATE_CONFIGS_DIR / f"{accelerate_config}.yaml"
    if not config_path.is_file():
        config_path = ACCELERATE_CONFIGS_DIR / accelerate_config
    if not config_path.is_file():
        raise ConfigError(f"accelerate config not found: {accelerate_config} (looked in {ACCELERATE_CONFIGS_DIR})")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + [str(script), *rest]


# The lines a recipe prints for bad input (exit_on_user_error) and the exception names it may raise.
_USEFUL = re.compile(
    r"^(?:\[rank\d+\]:\s*)?(?:llmkit: error:|error:|(?:\w+\.)*(?:LlmkitError|ConfigError|DataError)\b)"
)


def first_useful_line(log: str) -> str | None:
    """The first line of `log` that names the user-facing error (an llmkit error line), else None."""
    for line in log.splitlines():
        stripped = line.strip()
        if _USEFUL.match(stripped):
            return stripped
    return None


def run_launch(cmd: list[str], multi_process: bool, log_dir: str | os.PathLike | None = None) -> int:
    """Run `cmd`; for a multi-process launch, keep stderr in a log and on failure print only its one useful line.

    accelerate/torchrun wrap one child's error in ~75 lines of gloo/elastic tracebacks; the log keeps them all.
    """
    if not multi_process:
        return subprocess.call(cmd, env=dict(os.environ))
    folder = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="llmkit-launch-", suffix=".log", dir=folder)
    print(
        f"(the processes' stderr, progress bars included, goes to {name}; `tail -f` it to follow)",
        file=sys.stderr,
        flush=True,
    )
    with os.fdopen(fd, "w") as log:
        code = subprocess.call(cmd, env=dict(os.environ), stderr=log)
    if code != 0:
        text = Path(name).read_text(errors="replace")
        line = first_useful_line(text)
        if line is None:  # not an llmkit error: show the tail, which names the exception
            tail = [line for line in text.splitlines() if line.strip()][-3:]
            line = " | ".join(tail) or f"exit status {code}"
        print(
            f"{line}\n(multi-process launch failed with status {code}; full log: {name})", file=sys.stderr, flush=True
        )
    else:
        Path(name).unlink(missing_ok=True)
    return code
