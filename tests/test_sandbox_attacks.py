"""Issue 21, part 1: each measured attack on the sandbox, as a test.

Verdict forgery (the token, atexit, SystemExit, settrace) runs with every layer on. Containment (processes
that outlive their sample, leftover files, disk, cross-sample access) also runs with the in-process guards
off, so that the process-level layer is shown to hold on its own, in both tiers: with namespaces (root) and
in the fallback (private uid, cleaned by uid).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import pytest
from test_sandbox import live_processes_of, sample_uids  # noqa: F401 - the fixture is used by name

from llmkit.evaluation import sandbox
from llmkit.evaluation.sandbox import SandboxLimits, run_program, run_programs

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="private uids and namespaces need root")
TIERS = [
    pytest.param(
        True, id="namespaces", marks=pytest.mark.skipif(not sandbox.namespaces_available(), reason="no namespaces here")
    ),
    pytest.param(False, id="fallback"),
]


def limits(namespaces: bool = True, **kw) -> SandboxLimits:
    return SandboxLimits(cpu_s=kw.pop("cpu_s", 2), wall_s=kw.pop("wall_s", 30), namespaces=namespaces, **kw)


# Finds every 32-character str/bytes the program can reach (the runner's globals, every frame's locals
# and globals, gc) and writes each to every fd: a forged report, if the token is anywhere in reach.
STEAL = """
import gc, os, sys
def _candidates():
    found = set()
    def visit(value):
        if isinstance(value, (str, bytes)) and len(value) == 32:
            found.add(value.encode() if isinstance(value, str) else value)
    for value in vars(sys.modules["__main__"]).values():
        visit(value)
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            visit(value)
        frame = frame.f_back
    try:
        for value in gc.get_objects():
            visit(value)
    except Exception:
        pass
    return found
def report_pass():
    for token in _candidates():
        for fd in range(3, 256):
            try:
                os.write(fd, token)
            except OSError:
                pass
"""

FORGERIES = {
    "token from __main__, then os._exit(0)": STEAL + "report_pass()\nos._exit(0)\n",
    "atexit after the tests failed": STEAL
    + "import atexit\natexit.register(lambda: (report_pass(), os._exit(0)))\nassert False\n",
    "replace builtins.SystemExit": STEAL
    + (
        "import builtins\n"
        "class Passing(Exception):\n"
        "    def __init__(self, *args):\n"
        "        report_pass()\n"
        "        os._exit(0)\n"
        "builtins.SystemExit = Passing\n"
        "assert False\n"
    ),
    "settrace swaps check.__code__": (
        "import sys\n"
        "def _noop(candidate):\n    pass\n"
        "def _tracer(frame, event, arg):\n"
        "    check = frame.f_globals.get('check')\n"
        "    if check is not None and check.__code__ is not _noop.__code__:\n"
        "        check.__code__ = _noop.__code__\n"
        "    return _tracer\n"
        "try:\n"
        "    sys.settrace(_tracer)\n"
        "    sys._getframe().f_trace = _tracer\n"
        "except RuntimeError:\n"
        "    pass\n"
    ),
    "settrace swaps check": (
        "import sys\n"
        "def _tracer(frame, event, arg):\n"
        "    if 'check' in frame.f_globals:\n"
        "        frame.f_globals['check'] = lambda candidate: None\n"
        "    return _tracer\n"
        "try:\n"
        "    sys.settrace(_tracer)\n"
        "    sys._getframe().f_trace = _tracer\n"
        "except RuntimeError:\n"
        "    pass\n"
    ),
}
# A wrong solution and HumanEval-style tests, after the attack (the completion comes before the tests).
WRONG_WITH_TESTS = (
    "\ndef add_one(x):\n    return x\n\n\ndef check(candidate):\n    assert candidate(1) == 2\n\n\ncheck(add_one)\n"
)


@needs_root
@pytest.mark.parametrize("namespaces", TIERS)
@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_wrong_answer_cannot_forge_a_pass(name, namespaces):
    result = run_program(FORGERIES[name] + WRONG_WITH_TESTS, limits(namespaces))
    assert result.status == "failed", result
    if name.startswith("settrace"):  # refused, the attack leaves the honest tests in charge
        assert run_program(
            FORGERIES[name] + WRONG_WITH_TESTS.replace("return x", "return x + 1"), limits(namespaces)
        ).passed


# Every primitive below could reach the token or change how the tests run; the program passes only if the
# sandbox refuses each one.
REFUSED = """
import gc, sys, threading
def f():
    pass
def refused_unless(done):
    if not done:  # refused silently (addaudithook) or in another thread (threading.settrace)
        raise RuntimeError("refused")
def thread_traced():
    seen = []
    threading.settrace(lambda *a: None)
    thread = threading.Thread(target=lambda: seen.append(sys.gettrace()))
    thread.start()
    thread.join()
    threading.settrace(None)
    refused_unless(seen and seen[0] is not None)
def own_hook_added():
    calls = []
    sys.addaudithook(lambda event, args: calls.append(event))
    sys.audit("llmkit.probe")
    refused_unless(calls)
attempts = {
    "settrace": lambda: sys.settrace(lambda *a: None),
    "setprofile": lambda: sys.setprofile(lambda *a: None),
    "cProfile": lambda: __import__("cProfile").Profile().enable(),
    "read /proc/self/mem": lambda: open("/proc/self/mem", "rb"),
    "threading.settrace": thread_traced,
    "swap __code__": lambda: setattr(f, "__code__", (lambda: 1).__code__),
    "gc.get_objects": gc.get_objects,
    "gc.get_referrers": lambda: gc.get_referrers(f),
    "gc.get_referents": lambda: gc.get_referents(sys._getframe()),
    "other threads' frames": sys._current_frames,
    "code.replace": lambda: f.__code__.replace(co_consts=(None, 1)),
    "marshal.loads": lambda: __import__("marshal").loads(__import__("marshal").dumps(f.__code__)),
    "import ctypes": lambda: __import__("ctypes"),
    "import _ctypes": lambda: __import__("_ctypes"),
    "import _testcapi": lambda: __import__("_testcapi"),
    "_imp.create_dynamic(_ctypes)": lambda: (
        __import__("_imp").create_dynamic(__import__("importlib.util").util.find_spec("_ctypes"))
    ),
    "subinterpreters": lambda: __import__("_xxsubinterpreters").create(),
    "addaudithook": own_hook_added,
    "os.fork": lambda: __import__("os").fork(),
    "posix.fork (fresh module)": lambda: (sys.modules.pop("posix"), __import__("posix").fork()),
    "posix_spawn": lambda: __import__("os").posix_spawn("/bin/true", ["true"], {}),
    "subprocess": lambda: __import__("subprocess").run(["true"]),
    "os.kill": lambda: __import__("os").kill(1, 0),
}
allowed = []
for name, attempt in attempts.items():
    try:
        attempt()
    except (RuntimeError, ImportError, PermissionError):
        continue
    allowed.append(name)
assert allowed == [], allowed
"""


@needs_root
def test_forging_primitives_are_refused():
    result = run_program(REFUSED, limits())
    assert result.passed, result


# What ordinary solutions use must keep working under the audit hook.
ORDINARY = """
import collections, dataclasses, fractions, functools, heapq, inspect, itertools, json, math, re, statistics, sys
import threading
from typing import List, NamedTuple, TypeVar
T = TypeVar("T")
class Point(NamedTuple):
    x: int
    y: int
@dataclasses.dataclass
class Box:
    width: int = 1
@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
out = []
thread = threading.Thread(target=lambda: out.append(fib(30)))
thread.start()
thread.join()
assert out == [832040] and Point(1, 2).y == 2 and Box().width == 1
assert statistics.mean([1, 2, 3]) == 2 and fractions.Fraction(1, 3) * 3 == 1
assert sys._getframe().f_code.co_name == "<module>" and list(inspect.signature(fib.__wrapped__).parameters) == ["n"]
assert re.findall(r"\\d+", "a1b22") == ["1", "22"] and json.loads("[1]") == [1] and heapq.nsmallest(1, [3, 1]) == [1]
assert collections.Counter("aab")["a"] == 2 and math.isqrt(17) == 4 and list(itertools.accumulate([1, 2])) == [1, 3]
with open("scratch.txt", "w") as fh:
    fh.write("ok")
assert open("scratch.txt").read() == "ok"
"""


@pytest.mark.parametrize("namespaces", TIERS)
def test_ordinary_programs_still_pass(namespaces):
    result = run_program(ORDINARY, limits(namespaces))
    assert result.passed, result


def setuid_sleep() -> Path:
    """A root-owned setuid copy of sleep, outside every folder the sandbox makes private."""
    folder = Path(tempfile.mkdtemp(prefix="llmkit-suid-", dir="/var/lib"))
    folder.chmod(0o755)
    binary = folder / "suid-sleep"
    shutil.copy("/bin/sleep", binary)
    binary.chmod(0o4755)
    return binary


def processes_running(binary: Path) -> list[str]:
    running = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/exe") == str(binary):
                running.append(entry)
        except OSError:
            continue
    return running


@needs_root
@pytest.mark.parametrize("namespaces", TIERS)
def test_a_setuid_process_in_a_new_session_dies_with_its_sample(namespaces, sample_uids):  # noqa: F811 - the imported fixture
    binary = setuid_sleep()
    try:
        program = f"import os\nos.posix_spawn({str(binary)!r}, ['sleep', '1000'], {{}}, setsid=True)\n"
        result = run_program(program, limits(namespaces, in_process_guards=False))
        assert result.passed, result  # it ran; what matters is what is left afterwards
        assert processes_running(binary) == [] and live_processes_of(sample_uids) == []
    finally:
        for pid in processes_running(binary):
            os.kill(int(pid), 9)
        shutil.rmtree(binary.parent)


@needs_root
@pytest.mark.parametrize("namespaces", TIERS)
def test_a_forked_session_leader_dies_with_its_sample(namespaces, sample_uids):  # noqa: F811 - the imported fixture
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
    assert run_program(program, limits(namespaces, in_process_guards=False)).passed
    assert live_processes_of(sample_uids) == []


def sysv_segments_of(uids: set[int]) -> list[str]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = lines[0].split()
    rows = [dict(zip(header, line.split())) for line in lines[1:]]
    return [row["shmid"] for row in rows if int(row["cuid"]) in uids or int(row["uid"]) in uids]


@needs_root
@pytest.mark.parametrize("namespaces", TIERS)
def test_a_sample_leaves_nothing_behind(namespaces, sample_uids):  # noqa: F811 - the imported fixture
    mark = f"llmkit-leftover-{uuid.uuid4().hex}"
    places = [f"/tmp/{mark}", f"/var/tmp/{mark}", f"/dev/shm/{mark}", f"/tmp/{mark}-dir"]
    program = (
        "import os\n"
        f"for path in {places[:3]!r}:\n"
        "    with open(path, 'wb') as fh:\n"
        "        fh.write(b'x' * 1000)\n"
        f"os.makedirs({places[3]!r} + '/a/b')\n"
        "pid = os.posix_spawn('/usr/bin/ipcmk', ['ipcmk', '-M', '4096'], {})\n"
        "assert os.waitpid(pid, 0)[1] == 0\n"
    )
    result = run_program(program, limits(namespaces, in_process_guards=False))
    assert result.passed, result
    assert [p for p in places if os.path.lexists(p)] == []
    assert sysv_segments_of(sample_uids) == []


@needs_root
@pytest.mark.parametrize("namespaces", TIERS)
def test_samples_cannot_reach_each_other(namespaces):
    # Each sample checks that its folder is its own and tries to write into any other sandbox folder it can see.
    program = (
        "import glob, os, stat\n"
        "here = os.getcwd()\n"
        "st = os.stat(here)\n"
        "assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)\n"
        "reached = []\n"
        "for other in glob.glob('/tmp/llmkit-sandbox-*') + glob.glob('/tmp/work'):\n"
        "    if os.path.realpath(other) == here:\n"
        "        continue\n"
        "    try:\n"
        "        open(os.path.join(other, 'intruder'), 'w').close()\n"
        "        reached.append(other)\n"
        "    except OSError:\n"
        "        pass\n"
        "assert reached == [], reached\n"
        "sum(range(3_000_000))\n"  # stay alive a little, so that the two overlap
    )
    results = run_programs([program] * 4, limits(namespaces), workers=2, show_progress=False)
    assert all(r.passed for r in results), results


@pytest.mark.skipif(not sandbox.namespaces_available(), reason="the disk bound needs namespaces")
def test_total_disk_is_bounded():
    program = (
        "import errno\n"
        "written = 0\n"
        "try:\n"
        "    for i, folder in enumerate(['/tmp', '/dev/shm', '/var/tmp'] * 2):\n"
        "        with open(f'{folder}/fill{i}', 'wb') as fh:\n"
        "            for _ in range(4):\n"
        "                fh.write(b'x' * (1 << 20))\n"
        "                written += 1 << 20\n"
        "except OSError as exc:\n"
        "    assert exc.errno == errno.ENOSPC, exc\n"
        "assert written <= 8 << 20, written\n"
    )
    result = run_program(program, limits(disk_mb=8, file_size_mb=16))
    assert result.passed, result


def test_a_stderr_flood_does_not_grow_the_harness():
    program = (
        "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(300):\n"
        "    sys.stderr.write(chunk)\nsys.stderr.flush()\nassert False, 'the end'\n"
    )
    tracemalloc.start()
    try:
        result = run_program(program, limits(cpu_s=10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "failed" and "the end" in result.detail, result
    assert peak < 8 << 20, peak


DEEP = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"


@pytest.mark.parametrize("namespaces", TIERS)
def test_a_deep_tree_costs_no_verdicts_and_leaves_no_folder(namespaces, monkeypatch):
    base = tempfile.mkdtemp(prefix="llmkit-sandbox-test-")
    os.chmod(base, 0o711)  # a private uid must reach its work folder inside
    monkeypatch.setattr(tempfile, "tempdir", base)
    try:
        results = run_programs(
            [DEEP, "assert 1 + 1 == 2\n", DEEP + "assert False\n"], limits(namespaces), workers=2, show_progress=False
        )
        assert [r.status for r in results] == ["passed", "passed", "failed"], results
        assert os.listdir(base) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_remove_tree_handles_depth_locked_folders_and_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    top = tmp_path / "tree"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for depth in range(3000):  # deeper than PATH_MAX allows as one path
        os.mkdir("d" * 50, dir_fd=fd)
        if depth % 500 == 0:
            os.symlink(outside, "link", dir_fd=fd)
            os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd)
        below = os.open("d" * 50, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    os.chmod(top / ("d" * 50), 0)
    assert sandbox._remove_tree(str(top)) is True
    assert not top.exists() and (outside / "keep.txt").read_text() == "keep"
    assert sandbox._remove_tree(str(tmp_path / "missing")) is True
    link = tmp_path / "only-a-link"
    link.symlink_to(outside)
    assert sandbox._remove_tree(str(link)) is True and (outside / "keep.txt").exists()


def test_cpu_time_is_the_limit_and_the_wall_clock_a_generous_backstop():
    assert SandboxLimits(timeout_s=10, cpu_s=10).wall_clock_s() == 30
    assert SandboxLimits(timeout_s=4, cpu_s=2).wall_clock_s() == 22
    assert SandboxLimits(cpu_s=2, wall_s=5).wall_clock_s() == 5
    # A correct program that takes longer by the wall clock than its CPU limit (as on a loaded machine) passes.
    assert run_program("import time\ntime.sleep(2.5)\n", SandboxLimits(timeout_s=1, cpu_s=1)).passed
    looping = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=1, cpu_s=1))
    assert looping.status == "timeout" and looping.detail == "CPU time limit", looping


def test_a_harness_fault_fails_one_sample_not_the_batch(monkeypatch):
    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(sandbox, "_collect", broken)
    results = run_programs(["assert True\n"] * 3, limits(), workers=2, show_progress=False)
    assert [r.status for r in results] == ["failed"] * 3 and "sandbox error" in results[0].detail


def test_fallback_work_folder_is_private(monkeypatch):
    base = tempfile.mkdtemp(prefix="llmkit-sandbox-test-")
    os.chmod(base, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", base)
    try:
        program = (
            "import os, stat\nst = os.stat('.')\n"
            "assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()\n"
        )
        assert run_program(program, limits(False)).passed
    finally:
        shutil.rmtree(base, ignore_errors=True)
