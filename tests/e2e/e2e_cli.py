"""What the end-to-end tests share besides fixtures: the console script, running it, reading a run's metrics. A module
of its own (not conftest.py) so that `from e2e_cli import ...` names one file whatever other test folders' conftest
files pytest loaded first."""

import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

TUNESMITH = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost", "lemon", "orbit", "pearl", "quartz"]


def run_cli(*args, cwd=None, env=None, check=True, stdin=None, timeout=600):
    # One OpenMP thread: the tiny models' matmuls are microseconds, and a second thread mostly waits for a busy core
    # (helpers measured 2.5-5 s per training step with two threads vs 0.6 s with one on a loaded 2-core machine).
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                **(env or {})}
    proc = subprocess.run([TUNESMITH, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          input=stdin, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def run_main(*args, env=None, check=True) -> subprocess.CompletedProcess:
    """`tunesmith ARGS` through the console script's own main() in this process: the same parsing, checks, messages
    (printed and logged) and exit code as run_cli, without a new interpreter's ~7 s of imports. For commands whose
    outcome is a refusal, or a short run that patches nothing global; what only a process shows (its
    environment read at import, signals, several ranks) goes through run_cli. An uncaught exception propagates: the
    test fails, as a traceback on stderr would fail it through the console script."""
    from tunesmith.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger, saved_env = logging.getLogger("tunesmith"), dict(os.environ)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    logger.addHandler(handler)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        logger.removeHandler(handler)
        os.environ.clear()
        os.environ.update(saved_env)
    if check and code != 0:
        raise AssertionError(f"tunesmith {' '.join(map(str, args))} exited {code}\n{err.getvalue()[-4000:]}")
    return subprocess.CompletedProcess(["tunesmith", *map(str, args)], code, out.getvalue(), err.getvalue())


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_preflight_recorded(run_dir):
    """Every training command goes through train/preflight.py: the memory plan ran, and config.yaml records it, the
    speed choices and the parameter counts."""
    import yaml

    resolved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["_resolved"]
    assert resolved["memory_plan"]["needed_gib"] > 0 and resolved["memory_plan"]["available_gib"] > 0
    assert {"packing", "gradient_checkpointing", "checkpoint_every"} <= set(resolved["choices"])
    assert resolved["trainable_params"] > 0 and resolved["frozen_params"] >= 0
    assert resolved["device"] == "cpu" and resolved["dtype"] == "torch.float32"


class Server:
    """`tunesmith deploy ARGS` on a free port of 127.0.0.1, its output in a log file."""

    def __init__(self, *args, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.log = f"http://127.0.0.1:{self.port}", log
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        with open(log, "w") as out:
            self.proc = subprocess.Popen([TUNESMITH, "deploy", *map(str, args), "--host", "127.0.0.1", "--port",
                                          str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tunesmith deploy exited {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                if request(self, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"tunesmith deploy not ready after {timeout}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(server: Server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120) -> tuple[int, dict]:
    """A raw HTTP request (to send what the openai client would refuse to); returns status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else {"text": data.decode()}
    finally:
        conn.close()


@contextmanager
def running(*args, log: Path) -> Iterator[Server]:
    """`tunesmith deploy ARGS` started and ready for the block, stopped (SIGTERM) after it."""
    server = Server(*args, log=log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
