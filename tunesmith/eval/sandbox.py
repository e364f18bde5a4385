"""Run untrusted generated code (humaneval-style benchmarks): one Python program per call, in a subprocess.

    from tunesmith.eval.sandbox import run_python
    result = run_python("def add(a, b): return a + b\nassert add(2, 3) == 5", timeout=3.0)
    result.passed, result.status   # True, "passed"

What holds the program in (each layer is a different mechanism, so one missing does not open everything):
- its own process group, killed whole when the wall-clock `timeout` runs out (an infinite loop, a sleeping child);
- resource limits set before it starts: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE),
  open files, and processes (RLIMIT_NPROC, against fork bombs; the kernel ignores it for root, so as root the program
  runs as `nobody`, which also makes the file system read-only to it outside world-writable folders);
- no network: a network namespace of its own (`unshare -n`: no interfaces, not even a working loopback) where the
  `unshare` tool may create one (root, or `unshare -rn` where user namespaces are allowed); everywhere, an audit hook
  installed before the program runs refuses socket connect/bind/sendto/getaddrinfo, and the environment has no proxies;
- a fresh temporary directory as its working directory, HOME and TMPDIR, deleted afterwards; the audit hook refuses
  opening a file for writing, and removing, renaming or creating anything, outside it, and refuses starting other
  programs (subprocess, os.system, exec, fork).
The audit hook runs in the program's own interpreter: Python code that reaches raw memory (ctypes) could get past
it, which is why the namespace, the uid and the limits are there too. `probe()` says which layers this machine has.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
DEFAULT_TIMEOUT_S = 3.0  # what HF evaluate's code_eval (and so lm-eval's humaneval) gives each program
DEFAULT_MEMORY_MB = 1024
MAX_FILE_MB = 16
MAX_PROCESSES = 64  # the limit is per user: room for the interpreter's threads, not for a fork bomb
OUTPUT_LIMIT = 4000  # characters of stdout/stderr kept in the result

# Installed in the program's interpreter before its first line runs (python -I -S runner.py), so the program cannot
# run first. sys.addaudithook hooks cannot be removed.
RUNNER = textwrap.dedent('''
    import os, resource, sys
    HERE = os.path.realpath(os.getcwd())
    # limits first (lowered by the process itself, so no preexec_fn in a threaded parent): argv = program cpu_s mem_mb
    cpu, memory = int(sys.argv[2]), int(sys.argv[3]) << 20
    for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                         (resource.RLIMIT_FSIZE, __FSIZE_MB__ << 20), (resource.RLIMIT_NOFILE, 64),
                         (resource.RLIMIT_NPROC, __NPROC__), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    BLOCK = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
             "socket.gethostbyname", "socket.gethostbyaddr", "subprocess.Popen", "os.system", "os.exec",
             "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "os.startfile"}
    PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
             "os.truncate", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime"}

    def inside(path):
        try:
            real = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd/%d" % path)
        except Exception:
            return False
        return real == HERE or real.startswith(HERE + os.sep) or real == "/dev/null"

    def hook(event, args):
        if event in BLOCK:
            raise PermissionError("sandbox: %s is not allowed" % event)
        if event == "open" and args and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1] or "r", args[2] or 0
            writes = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writes and not inside(args[0]):
                raise PermissionError("sandbox: writing %r outside the sandbox directory" % (args[0],))
        elif event in PATHS and args and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
            raise PermissionError("sandbox: %s outside the sandbox directory" % event)

    sys.addaudithook(hook)
    sys.argv = sys.argv[1:2]
    code = open(sys.argv[0], encoding="utf-8").read()
    exec(compile(code, sys.argv[0], "exec"), {"__name__": "__main__", "__file__": sys.argv[0]})
''').replace("__FSIZE_MB__", str(MAX_FILE_MB)).replace("__NPROC__", str(MAX_PROCESSES))


@dataclass
class SandboxResult:
    status: str  # passed | failed (an exception, non-zero exit) | timeout (killed) | error (could not start)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Layers:
    """Which isolation this machine gives; said in the eval output."""
    network: str  # "namespace (unshare -n)" | "namespace (unshare -rn)" | "audit hook only"
    uid: str  # "nobody" | "the caller's"
    prefix: tuple[str, ...]  # the command put before python

    def describe(self) -> str:
        nproc = ("process limit (RLIMIT_NPROC)" if self.uid == "nobody" or os.geteuid() != 0 else
                 "no process limit (root ignores RLIMIT_NPROC; forks refused by the audit hook)")
        return (f"subprocess with CPU, memory and file-size limits, {nproc}, a wall-clock timeout, its own temporary "
                f"directory, no network ({self.network} + audit hook), runs as {self.uid} uid")


@functools.cache
def probe() -> Layers:
    """Find the strongest isolation this machine allows (checked once per process: ~10 ms)."""
    tool = shutil.which("unshare")
    is_root = os.geteuid() == 0
    candidates: list[tuple[tuple[str, ...], str, str]] = []
    if tool and is_root:
        candidates.append(((tool, "-n", "-S", str(NOBODY), "-G", str(NOBODY), "--"), "namespace (unshare -n)",
                           "nobody"))
    if tool:
        candidates.append(((tool, "-rn", "--"), "namespace (unshare -rn)", "the caller's"))
    for prefix, network, uid in candidates:
        try:
            ok = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", "pass"], capture_output=True,
                                timeout=10, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return Layers(network, uid, prefix)
    return Layers("audit hook only", "the caller's", ())


def run_python(code: str, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
               stdin: str = "") -> SandboxResult:
    """Run `code` as a Python program in the sandbox; passed = it exited 0 within `timeout` seconds."""
    import time

    layers = probe()
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-sandbox-"))
    try:
        (folder / "program.py").write_text(code, encoding="utf-8")
        (folder / "runner.py").write_text(RUNNER, encoding="utf-8")
        if layers.uid == "nobody":
            for path in (folder, folder / "program.py", folder / "runner.py"):
                os.chown(path, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "TMPDIR": str(folder), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}  # no proxies, no tokens, no PYTHONPATH
        command = [*layers.prefix, sys.executable, "-I", "-S", "runner.py", "program.py", str(int(timeout) + 1),
                   str(memory_mb)]
        start = time.monotonic()
        try:
            process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
        except OSError as err:
            return SandboxResult("error", None, "", f"sandbox: cannot start python: {err}", 0.0)
        try:
            out, err = process.communicate(stdin.encode(), timeout=timeout)
            status = "passed" if process.returncode == 0 else "failed"
            if process.returncode == -signal.SIGXCPU or process.returncode == -signal.SIGKILL:
                status = "timeout"  # the CPU limit ran out before the wall clock did
        except subprocess.TimeoutExpired:
            _kill_group(process)
            out, err = process.communicate()
            status = "timeout"
        return SandboxResult(status, process.returncode, out.decode(errors="replace")[-OUTPUT_LIMIT:],
                             err.decode(errors="replace")[-OUTPUT_LIMIT:], round(time.monotonic() - start, 3))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the program and anything it started
    except ProcessLookupError:
        pass
