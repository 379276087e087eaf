"""The execution sandbox: the pass rule and the hostile-completion suite."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from llmkit.evaluation.sandbox import SandboxLimits, run_program, run_programs

# CPU time is the limit; hostile runs get a short wall-clock backstop (only `sleep forever` reaches it),
# correct ones the default generous one, so a busy machine cannot turn them into timeouts.
LIMITS = SandboxLimits(cpu_s=2, wall_s=3)
CORRECT = SandboxLimits(cpu_s=2)

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
    "escape the session": (
        "import ctypes, time\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    libc.setsid()\n    time.sleep(1000)\n"
    ),
}


def test_correct_program_passes_and_wrong_fails():
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", CORRECT).passed
    result = run_program("assert 1 == 2\n", CORRECT)
    assert result.status == "failed" and "AssertionError" in result.detail
    assert run_program("", CORRECT).passed  # an empty program runs to completion (the tests make it fail)


@pytest.mark.parametrize("namespaces", [pytest.param(True, id="namespaces"), pytest.param(False, id="fallback")])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(name, namespaces, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    program = HOSTILE[name] + f"\nimport os\nos.remove({str(victim)!r})\n"
    result = run_program(program, dataclasses.replace(LIMITS, namespaces=namespaces))
    assert result.status in ("failed", "timeout"), result
    assert victim.read_text() == "keep me"


def test_deleting_files_outside_the_temp_dir_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("x")
    for program in (
        f"import os\nos.remove({str(target)!r})\n",
        f"import pathlib\npathlib.Path({str(target)!r}).unlink()\n",
        f"import posix\nposix.unlink({str(target)!r})\n",
    ):
        assert not run_program(program, LIMITS).passed
        assert target.exists()


def live_processes_of(uids: set[int]) -> list[str]:
    """Live processes with any of `uids` as their real, effective, saved or filesystem uid."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if uids & {int(u) for u in fields["Uid"].split()} and fields["State"].split()[0] not in ("Z", "X"):
                alive.append(entry)
    return alive


@pytest.fixture
def sample_uids(monkeypatch):
    """The private uids the runs of a test get (only this test's: other sandboxes may run on the machine)."""
    from llmkit.evaluation import sandbox

    used: set[int] = set()
    next_uid = sandbox._next_uid

    def recording():
        uid = next_uid()
        used.add(uid)
        return uid

    monkeypatch.setattr(sandbox, "_next_uid", recording)
    return used


def test_no_stray_processes_after_hostile_runs(sample_uids):
    run_programs([HOSTILE["escape the session"], HOSTILE["fork bomb (ctypes)"]], LIMITS, workers=2, show_progress=False)
    assert live_processes_of(sample_uids) == []


def test_harness_keeps_going_in_parallel():
    programs = [HOSTILE["infinite loop"], "assert True\n", HOSTILE["kill the parent"], "x = 1\n"]
    results = run_programs(programs, SandboxLimits(cpu_s=2, wall_s=30), workers=2, show_progress=False)
    assert [r.passed for r in results] == [False, True, False, True]
