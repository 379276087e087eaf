"""Run untrusted model-written programs: one contained process tree per sample, and a verdict it cannot forge.

The verdict. A program passes only if every statement ran to completion. The runner proves that with a
per-run random token that the harness sends on a pipe and expects back on another pipe. The token is never
a name the program can reach: the runner puts it into the last step of a chain of C-level calls
(`exec(program)`, a check that builtins are untouched, `os.write(report_fd, token)`) and keeps that chain only
on its own value stack, which Python code cannot inspect. The write therefore happens only if `exec` returned
normally, and then the runner calls `os._exit` at once (no `atexit`, no finalizers). An audit hook, which
Python code cannot remove, refuses what could reach the token or fake a finished run anyway: tracing and
profiling (`sys.settrace` could jump over or swap the tests), swapping a function's `__code__`, gc
introspection, other threads' frames, new code objects from bytes (`CodeType`, `marshal`, with imports
compiled from source), `ctypes` and the C test modules, subinterpreters, new audit hooks, and starting or
signalling processes. As a private uid the process is not dumpable, so `/proc/self/mem` is closed too.

Containment, in two tiers:

* as root where `unshare` works (`containment="namespaces"`): new pid, mount, IPC and network namespaces
  per sample. The sample's init is a small shell that mounts one size-bounded tmpfs over `/tmp` and binds
  parts of it over `/var/tmp`, `/dev/shm` and `/run/lock`, so the sample's files stay private and bounded in
  total and vanish with it. The program runs under a private uid with `no_new_privs` (a setuid binary gains
  nothing), and when the init exits, the kernel kills every process of the namespace, setuid or not;
* otherwise (`"private-uid"` as root, `"none"` as another user): a 0700 work folder, the process group
  and, with a private uid, every process whose real, effective, saved or filesystem uid is the sample's are
  killed, and files it left in the shared temp folders and SysV IPC objects are removed by uid.

Always: `python -I`, rlimits (CPU seconds, address space, file size, open files, processes), stderr read
with a cap (the rest drained), stdout discarded, CPU time as the limit and a generous wall-clock backstop
(default max(timeout_s, 3 x cpu_s, cpu_s + 20 s)), and a cleanup that cannot raise.
"""

from __future__ import annotations

import itertools
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple, Sequence

Status = Literal["passed", "failed", "timeout"]

# The runner (in the sandbox, under `python -I -c`). argv: cpu_s mem_mb fsize_mb nproc uid block_net
# report_fd token_fd guards. The token arrives on token_fd, the program on stdin.
_RUNNER = r"""
import sys


def _read_fd(os, fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _builtins_unchanged(before, now, _any=any, _error=RuntimeError):
    # Defaults bind at definition, so a program that replaces builtins.any cannot blind this check.
    if now.keys() != before.keys() or _any(now[k] is not v for k, v in before.items()):
        raise _error("program modified builtins")


def _audit_hook(block_net):
    # Everything the hook uses is bound here: builtins may be replaced by the time it runs. It holds no
    # secret, so running program code inside it (a str subclass's __eq__) could only make it refuse more.
    deny = frozenset((
        "sys.settrace", "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
        "sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
        "marshal.load", "marshal.loads", "cpython.PyInterpreterState_New",
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "os.remove", "os.rmdir", "os.rename", "os.truncate",
        "os.chmod", "os.chown", "os.chflags", "os.lchflags", "os.link", "os.setxattr", "os.removexattr",
        "shutil.rmtree",
    ))
    modules = frozenset((
        "ctypes", "_ctypes", "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer",
        "_testmultiphase", "_testsinglephase", "_testclinic", "_testimportmultiple", "_xxtestfuzz",
        "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "_posixsubprocess",
    ))

    def hook(event, args, _deny=deny, _modules=modules, _net=block_net, _str=str, _type=type,
             _len=len, _error=RuntimeError):
        if event in _deny or event.startswith("ctypes.") or (_net and event.startswith("socket.")):
            raise _error(event + " is not allowed in the sandbox")
        if event == "import":
            name = args[0] if _len(args) else None
            if _type(name) is not _str or name.rpartition(".")[2] in _modules:
                raise _error("this import is not allowed in the sandbox")
        elif event == "object.__setattr__":  # in 3.11 only a function's __code__; refuse odd names too
            name = args[1] if _len(args) > 1 else None
            if _type(name) is not _str or name == "__code__":
                raise _error("replacing a function's code is not allowed in the sandbox")

    return hook


def _prepare_imports(sys):
    # marshal is refused (crafted bytecode reads arbitrary memory), so imports after this point compile
    # from source; the modules most programs use are loaded now, from their cached bytecode.
    import bisect, collections, functools, heapq, itertools, math, operator, re, string, typing
    sys.pycache_prefix = "/nonexistent/llmkit-sandbox-no-bytecode"
    sys.dont_write_bytecode = True


def _fail(write, exc, _type=type, _str=str):
    try:
        text = "\nprogram raised %s: %s\n" % (_type(exc).__name__, _str(exc)[:300])
    except BaseException:
        text = "\nprogram raised an exception\n"  # the newline: its own line even after unterminated output
    write(2, text.encode("utf-8", "replace"))


def _main():
    import builtins, functools, operator, os, resource
    base_exception = BaseException
    cpu_s, mem_mb, fsize_mb, nproc, run_uid, block_net, report_fd, token_fd, guards = map(int, sys.argv[1:10])
    write, exit_now = os.write, os._exit
    token = _read_fd(os, token_fd)
    os.close(token_fd)
    source = _read_fd(os, 0).decode("utf-8", "replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb << 20, fsize_mb << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    if run_uid and os.getuid() == 0:
        os.setgroups([])
        os.setresgid(run_uid, run_uid, run_uid)
        os.setresuid(run_uid, run_uid, run_uid)  # also makes the process non-dumpable: /proc/self/mem closes
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    try:
        code = compile(source, "<program>", "exec")
    except base_exception as exc:
        _fail(write, exc)
        exit_now(1)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    steps = [functools.partial(exec, code, namespace),
             functools.partial(_builtins_unchanged, dict(builtins.__dict__), builtins.__dict__),
             functools.partial(write, report_fd, token)]
    holder = [map(operator.methodcaller("__call__"), steps)]
    del token, steps, code
    if guards:
        _prepare_imports(sys)
        sys.addaudithook(_audit_hook(block_net))
    try:
        list(holder.pop())  # from here on the chain lives only on this frame's value stack
    except base_exception as exc:
        _fail(write, exc)
        exit_now(1)
    exit_now(0)


_main()
"""

# PID 1 of the sample's namespaces: private, bounded temp folders, then the runner; its exit ends them all.
_INIT_SH = r"""
disk_mb=$1 uid=$2
shift 2
fail() { echo "llmkit sandbox setup: $1" >&2; exit 125; }
mount -t tmpfs -o "size=${disk_mb}m,nr_inodes=16384,mode=1777,nosuid,nodev" llmkit-sandbox /tmp || fail "private /tmp"
mkdir -m 1777 /tmp/.var-tmp /tmp/.dev-shm /tmp/.run-lock || fail "temp folders"
for pair in var-tmp:/var/tmp dev-shm:/dev/shm run-lock:/run/lock; do
    target=${pair#*:}
    if [ -d "$target" ] && [ ! -L "$target" ]; then
        mount --bind "/tmp/.${pair%%:*}" "$target" || fail "private $target"
    fi
done
mkdir -m 700 /tmp/work && chown "$uid:$uid" /tmp/work && cd /tmp/work || fail "work folder"
"$@"
status=$?
exit $status
"""

_REPORT_CAP = 256
_STDERR_CAP = 64 << 10
_SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


@dataclass
class SandboxLimits:
    """Resource limits of one run.

    CPU time (`cpu_s`) is the limit; the wall clock is only a backstop for programs that sleep, so that
    load on the machine does not turn correct programs into timeouts: `wall_s` when given, else
    max(timeout_s, 3 x cpu_s, cpu_s + 20). `disk_mb` bounds all the sample's files together (with
    namespaces), `file_size_mb` each file. `namespaces=False` and `in_process_guards=False` switch off a
    layer, to test that the others hold on their own.
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 16
    drop_root: bool = True
    disk_mb: int = 64
    wall_s: float | None = None
    namespaces: bool = True
    in_process_guards: bool = True

    def wall_clock_s(self) -> float:
        """The wall-clock backstop of a run."""
        if self.wall_s is not None:
            return float(self.wall_s)
        return float(max(self.timeout_s or 0, 3 * self.cpu_s, self.cpu_s + 20))


@dataclass
class ExecResult:
    """Outcome of one program: status, a short reason, and the isolation actually used."""

    status: Status
    detail: str
    network_isolation: str
    containment: str = ""
    # the last 64 KiB of what the program wrote to stderr (callers that read values a program reports, such as
    # the RL code reward, parse it; nothing in it decides `status`)
    stderr_tail: str = ""

    @property
    def passed(self) -> bool:
        """True only for a program that ran to completion under the pass rule."""
        return self.status == "passed"


def _world_readable(path: str) -> bool:
    """Whether a user with no special rights can reach `path` (every parent folder o+x, the file o+r)."""
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
            stdlib = subprocess.run(
                [system_python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                capture_output=True,
                text=True,
            ).stdout.strip()
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


def _namespace_command() -> list[str]:
    """unshare with fresh pid, mount, IPC and network namespaces, then the init script (args: disk_mb uid cmd...)."""
    unshare = shutil.which("unshare") or "unshare"
    return [
        unshare,
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--mount",
        "--ipc",
        "--net",
        "--",
        "/bin/sh",
        "-c",
        _INIT_SH,
        "llmkit-sandbox-init",
    ]


@lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether the namespace tier works here: root, Linux, and a trial run of the init script succeeds."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux") or not shutil.which("unshare"):
        return False
    try:
        run = subprocess.run([*_namespace_command(), "1", "0", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0


class _Plan(NamedTuple):
    containment: str  # "namespaces", "private-uid" or "none"
    network: str
    python: str
    run_uid: int
    wall_s: float


def _plan(limits: SandboxLimits) -> _Plan:
    python, can_drop = sandbox_interpreter()
    run_uid = _next_uid() if limits.drop_root and can_drop else 0
    if limits.namespaces and namespaces_available():
        return _Plan("namespaces", "netns", python, run_uid, limits.wall_clock_s())
    containment = "private-uid" if run_uid else "none"
    return _Plan(containment, network_isolation_mode(), python, run_uid, limits.wall_clock_s())


def run_program(program: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Execute `program` in a contained process tree and apply the pass rule.

    Never raises: a fault of the harness itself becomes a failed result whose detail starts with
    "sandbox error", so one sample cannot cost a batch its verdicts.
    """
    limits = limits or SandboxLimits()
    try:
        return _run(program, limits)
    except Exception as exc:  # noqa: BLE001 - the batch must survive any single sample
        return ExecResult(
            "failed", f"sandbox error: {type(exc).__name__}: {exc}"[:300], network_isolation_mode(), "error"
        )


def run_programs(
    programs: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None, show_progress: bool = True
) -> list[ExecResult]:
    """Run many programs in parallel (one process tree each, `workers` at a time, default: the cores)."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_program, p, limits) for p in programs]
        return [f.result() for f in tqdm(futures, desc="execute", disable=not show_progress)]


def _run(program: str, limits: SandboxLimits) -> ExecResult:
    plan = _plan(limits)
    token = secrets.token_hex(16).encode()
    workdir = None if plan.containment == "namespaces" else _make_workdir(plan.run_uid)
    opened: list[int] = []
    try:
        token_r, token_w = os.pipe()
        opened += [token_r, token_w]
        report_r, report_w = os.pipe()
        opened += [report_r, report_w]
        os.write(token_w, token)
        _close(opened, token_w)
        proc = subprocess.Popen(
            _command(plan, limits, report_w, token_r),
            cwd=workdir or "/",
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_environment(workdir or "/tmp/work"),
            start_new_session=True,
            pass_fds=(token_r, report_w),
        )
        _close(opened, token_r)
        _close(opened, report_w)
        try:
            report, stderr, timed_out = _collect(proc, program.encode("utf-8", "replace"), report_r, plan.wall_s)
        finally:
            _kill_group(proc)
            if plan.run_uid:
                _kill_uid(plan.run_uid)
            proc.stderr.close()
        return _verdict(plan, proc.returncode, report == token, stderr, timed_out)
    finally:
        for fd in opened:
            os.close(fd)
        if workdir:
            _remove_tree(workdir)
        if plan.containment == "private-uid":
            _clean_up_uid(plan.run_uid)


def _command(plan: _Plan, limits: SandboxLimits, report_fd: int, token_fd: int) -> list[str]:
    """The argv of one run: [namespaces or netns] [setpriv --no-new-privs] python -I -c RUNNER args."""
    args = [
        limits.cpu_s,
        limits.memory_mb,
        limits.file_size_mb,
        limits.max_processes,
        plan.run_uid,
        int(plan.network != "netns"),
        report_fd,
        token_fd,
        int(limits.in_process_guards),
    ]
    cmd = [plan.python, "-I", "-c", _RUNNER, *map(str, args)]
    setpriv = shutil.which("setpriv")
    if setpriv:
        cmd = [setpriv, "--no-new-privs", "--", *cmd]
    if plan.containment == "namespaces":
        return [*_namespace_command(), str(limits.disk_mb), str(plan.run_uid), *cmd]
    if plan.network == "netns":
        return [shutil.which("unshare") or "unshare", "--net", "--", *cmd]
    return cmd


def _environment(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0"}


def _make_workdir(run_uid: int) -> str:
    """A 0700 work folder owned by the run's uid: no other sample can look in or write to it."""
    workdir = tempfile.mkdtemp(prefix="llmkit-sandbox-")
    if run_uid:
        os.chown(workdir, run_uid, run_uid)
    return workdir


def _close(opened: list[int], fd: int) -> None:
    opened.remove(fd)
    os.close(fd)


class _Output(NamedTuple):
    report: bytes
    stderr: bytes
    timed_out: bool


def _collect(proc: subprocess.Popen, stdin_data: bytes, report_r: int, wall_s: float) -> _Output:
    """Feed the program, read the report and stderr (both capped, the rest drained) until EOF or the backstop.

    Once the sandbox's first process has exited, anything still holding the pipes (possible only
    without namespaces) gets half a second before the caller kills it.
    """
    deadline = time.monotonic() + wall_s
    stdin_fd, stderr_fd = proc.stdin.fileno(), proc.stderr.fileno()
    os.set_blocking(stdin_fd, False)
    report, stderr, pending = bytearray(), bytearray(), memoryview(stdin_data)
    exited_at = None
    with selectors.DefaultSelector() as sel:
        sel.register(stderr_fd, selectors.EVENT_READ)
        sel.register(report_r, selectors.EVENT_READ)
        if pending:
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return _Output(bytes(report), bytes(stderr), True)
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break
            for key, _ in sel.select(min(deadline - now, 0.1 if exited_at else 0.5)):
                if key.fd == stdin_fd:
                    pending = _feed(stdin_fd, pending)
                    if not pending:
                        sel.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == report_r:
                    report += chunk[
                        : max(0, _REPORT_CAP + 1 - len(report))
                    ]  # one byte over the token is enough to refuse it
                else:
                    stderr += chunk
                    del stderr[:-_STDERR_CAP]
    if not proc.stdin.closed:
        proc.stdin.close()
    return _Output(bytes(report), bytes(stderr), False)


def _feed(fd: int, pending: memoryview) -> memoryview:
    """Write what the pipe takes now; a reader that has gone gets nothing more."""
    try:
        return pending[os.write(fd, pending[: 1 << 16]) :]
    except BlockingIOError:
        return pending
    except OSError:
        return pending[:0]


def _verdict(plan: _Plan, returncode: int | None, token_seen: bool, stderr: bytes, timed_out: bool) -> ExecResult:
    def result(status: Status, detail: str) -> ExecResult:
        return ExecResult(status, detail, plan.network, plan.containment, stderr.decode("utf-8", "replace"))

    if timed_out:
        return result("timeout", f"wall-clock backstop after {plan.wall_s:g} s")
    if returncode == 0 and token_seen:
        return result("passed", "ran to completion")
    sig = _signal_of(returncode, plan.containment == "namespaces")
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        reason = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed"}.get(name, name)
        return result("timeout" if name == "SIGXCPU" else "failed", reason)
    if returncode == 0:
        return result("failed", "exited before the end of the program")
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return result("failed", lines[-1][:300] if lines else f"exit code {returncode} before the end of the program")


def _signal_of(returncode: int | None, through_shell: bool) -> int | None:
    """The signal that ended the runner, if any (the namespace init is a shell: 128 + signal)."""
    if returncode is None:
        return signal.SIGKILL
    if returncode < 0:
        return -returncode
    if through_shell and 128 < returncode < 128 + 65:
        return returncode - 128
    return None


_uid_lock = threading.Lock()
_uid_counter = itertools.count()
_uid_base = secrets.randbelow(1_000_000)


def _next_uid() -> int:
    """A uid for one run, in [200000, 1200000): random per harness process, then consecutive."""
    with _uid_lock:
        return 200_000 + (_uid_base + next(_uid_counter)) % 1_000_000


def _process_uids(pid: str) -> tuple[set[int], bool]:
    """(real, effective, saved and filesystem uids of /proc/<pid>, whether it is alive); raises OSError."""
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return {int(u) for u in fields["Uid"].split()}, fields["State"].split()[0] not in ("Z", "X")


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes with `uid` as any of their uids: a setuid binary keeps the real one."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uids, alive = _process_uids(entry)
        except (OSError, KeyError, ValueError, IndexError):
            continue
        if alive and uid in uids:
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int, deadline_s: float = 10.0) -> None:
    """Kill every process of `uid` (the run's private uid), wherever its session is.

    A fork bomb keeps forking while we scan, so first freeze (SIGSTOP) until a scan finds nothing new,
    then SIGKILL everything, and wait until no live process of the uid is left.
    """
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
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (with namespaces: unshare, whose death takes the namespace's init along)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _remove_tree(path: str) -> bool:
    """Remove `path` and everything under it; never raises, never follows a symlink; True when it is gone.

    Iterative, with one directory fd at a time (never a path longer than one name), so a tree of any
    depth, unreadable folders (mode 000) or names of any length cannot make it fail or recurse.
    """
    try:
        return _remove_tree_fd(path)
    except Exception:  # noqa: BLE001 - cleanup must not cost the caller its results
        return not os.path.lexists(path)


def _remove_tree_fd(path: str) -> bool:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except OSError:
            pass
        return not os.path.lexists(path)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    current = os.open(path, flags)
    names: list[tuple[str, tuple[int, int]]] = []  # the way from `path` down to `current`, one folder per level
    stuck: set[tuple[int, int]] = set()  # folders that could not be emptied: never descend twice
    try:
        while True:
            child = _empty_but_subfolders(current, stuck)
            if child is not None:
                name, key = child
                try:
                    os.chmod(name, 0o700, dir_fd=current)  # a folder (scandir said so): chmod cannot follow a link
                    below = os.open(name, flags, dir_fd=current)
                except OSError:
                    stuck.add(key)
                    continue
                os.close(current)
                current = below
                names.append((name, key))
                continue
            if not names:
                break
            up = os.open("..", flags, dir_fd=current)
            os.close(current)
            current = up
            name, key = names.pop()
            try:
                os.rmdir(name, dir_fd=current)
            except OSError:
                stuck.add(key)
    finally:
        os.close(current)
    try:
        os.rmdir(path)
    except OSError:
        pass
    return not os.path.lexists(path)


def _empty_but_subfolders(dir_fd: int, stuck: set[tuple[int, int]]) -> tuple[str, tuple[int, int]] | None:
    """Unlink every non-folder in `dir_fd`; return one subfolder still to do (name, (dev, inode)), or None."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) not in stuck:
                        return entry.name, (st.st_dev, st.st_ino)
                else:
                    os.unlink(entry.name, dir_fd=dir_fd)
            except OSError:
                continue
    return None


def _clean_up_uid(uid: int) -> None:
    """Without namespaces: remove what the run's uid left in the shared temp folders and in SysV IPC."""
    for folder in _SHARED_TEMP_DIRS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    _remove_tree(entry.path)
            except OSError:
                continue
    _remove_ipc(uid)


def _remove_ipc(uid: int) -> None:
    """Remove SysV shared memory, semaphores and message queues created or owned by `uid`."""
    ipcrm = shutil.which("ipcrm")
    for kind, flag in (("shm", "-m"), ("sem", "-s"), ("msg", "-q")):
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                header, *rows = [line.split() for line in fh]
        except (OSError, ValueError):
            continue
        for row in rows:
            record = dict(zip(header, row))
            if ipcrm and str(uid) in (record.get("uid"), record.get("cuid")):
                subprocess.run([ipcrm, flag, record[header[1]]], capture_output=True)
