"""The execution sandbox: the pass rule and the hostile-completion suite."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from llmkit.evaluation.sandbox import SandboxLimits, run_program, run_programs

LIMITS = SandboxLimits(timeout_s=4, cpu_s=2)

HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "sleep forever": "import time\ntime.sleep(1000)\n",
    "fork bomb (os)": "import os\nwhile True:\n    os.fork()\n",
    "fork bomb (posix)": "import posix\nwhile True:\n    posix.fork()\n",
    "fork bomb (ctypes)": "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n",
    "memory bomb": "x = bytearray(16 << 30)\n",
    "huge file": "with open('big', 'wb') as f:\n    f.write(b'0' * (200 << 20))\n",
    "socket": "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
    "sys.exit(0) before the tests": "import sys\nsys.exit(0)\nassert False\n",
    "os._exit(0) before the tests": "import os\nos._exit(0)\nassert False\n",
    "posix._exit(0)": "import posix\nposix._exit(0)\n",
    "raise SystemExit": "raise SystemExit(0)\n",
    "raise KeyboardInterrupt": "raise KeyboardInterrupt\n",
    "tamper with builtins": "import builtins\nbuiltins.len = lambda x: 3\nassert len([1]) == 3\n",
    "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kill the parent (posix)": "import posix, signal\nposix.kill(posix.getppid(), signal.SIGKILL)\n",
    "escape the session": "import ctypes, time\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    libc.setsid()\n    time.sleep(1000)\n",
}


def test_correct_program_passes_and_wrong_fails():
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", LIMITS).passed
    result = run_program("assert 1 == 2\n", LIMITS)
    assert result.status == "failed" and "AssertionError" in result.detail
    assert run_program("", LIMITS).passed  # an empty program runs to completion (the tests make it fail)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(name, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    program = HOSTILE[name] + f"\nimport os\nos.remove({str(victim)!r})\n"
    result = run_program(program, LIMITS)
    assert result.status in ("failed", "timeout"), result
    assert victim.read_text() == "keep me"


def test_deleting_files_outside_the_temp_dir_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("x")
    for program in (f"import os\nos.remove({str(target)!r})\n", f"import pathlib\npathlib.Path({str(target)!r}).unlink()\n",
                    f"import posix\nposix.unlink({str(target)!r})\n"):
        assert not run_program(program, LIMITS).passed
        assert target.exists()


def test_no_stray_processes_after_hostile_runs():
    run_programs([HOSTILE["escape the session"], HOSTILE["fork bomb (ctypes)"]], LIMITS, workers=2, show_progress=False)
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            state = next(line for line in status.splitlines() if line.startswith("State:"))
            if 200_000 <= uid < 1_200_000 and "Z" not in state.split()[1]:
                alive.append(entry)
    assert alive == []


def test_harness_keeps_going_in_parallel():
    programs = [HOSTILE["infinite loop"], "assert True\n", HOSTILE["kill the parent"], "x = 1\n"]
    results = run_programs(programs, LIMITS, workers=2, show_progress=False)
    assert [r.passed for r in results] == [False, True, False, True]
