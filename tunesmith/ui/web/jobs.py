"""Jobs: each is the same `tunesmith` command a user could type, in its own process and session, so closing the page
or restarting the UI does not stop it; the UI finds it again from files on disk.

    job = start(workspace, "sft", values)    # jobs/<id>.yaml (the config), jobs/<id>.json (the record), jobs/<id>.log
    status(job)                              # running | done | failed | stopped
    stop(job)                                # SIGTERM: training saves a checkpoint and final/, then exits
    resume(workspace, job)                   # the same config with resume: true, as a new job
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.ui.web.workspace import Workspace


@dataclass
class Job:
    id: str
    command: str        # sft, pt, rlhf, eval, export, deploy
    argv: list[str]     # what runs, after `tunesmith`
    folder: str         # the run / output folder, relative to the workspace
    pid: int
    started: str
    workspace: str      # absolute path of the workspace it runs in

    @property
    def dir(self) -> Path:
        return Path(self.workspace)

    def file(self, suffix: str) -> Path:
        return self.dir / "jobs" / f"{self.id}{suffix}"


def tunesmith_executable() -> list[str]:
    found = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or shutil.which("tunesmith")
    return [found] if found else [sys.executable, "-m", "tunesmith.cli.main"]


def start(workspace: Workspace, command: str, values: dict[str, Any], folder_key: str = "output_dir") -> Job:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    job_id = f"{command.replace(' ', '-')}-{stamp}"
    values = dict(values)
    if folder_key and not values.get(folder_key):
        values[folder_key] = f"runs/{job_id}" if command in ("sft", "pt", "rlhf") else f"exports/{job_id}"
    folder = str(values.get(folder_key, ""))
    config = workspace.dir / "jobs" / f"{job_id}.yaml"
    config.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    argv = [*command.split(), "-c", str(config.relative_to(workspace.dir))]
    exit_file = workspace.dir / "jobs" / f"{job_id}.exit"
    log = (workspace.dir / "jobs" / f"{job_id}.log").open("wb")
    # a shell records the exit status, so a UI started later still knows how the job ended
    script = f"{shlex.join([*tunesmith_executable(), *argv])}; echo $? > {shlex.quote(str(exit_file))}"
    proc = subprocess.Popen(["/bin/sh", "-c", script], cwd=workspace.dir, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    job = Job(job_id, command, argv, folder, proc.pid, datetime.datetime.now().isoformat(timespec="seconds"),
              str(workspace.dir))
    job.file(".json").write_text(json.dumps(asdict(job), indent=1), encoding="utf-8")
    return job


def jobs(workspace: Workspace) -> list[Job]:
    """This workspace's jobs, newest first."""
    found = []
    for record in sorted((workspace.dir / "jobs").glob("*.json"), reverse=True):
        try:
            found.append(Job(**json.loads(record.read_text(encoding="utf-8"))))
        except (ValueError, TypeError):
            continue
    return found


def find(workspace: Workspace, job_id: str) -> Job | None:
    return next((j for j in jobs(workspace) if j.id == job_id), None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie of our own child counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def status(job: Job) -> str:
    exit_file = job.file(".exit")
    if exit_file.exists():
        code = exit_file.read_text().strip()
        stopped = job.file(".stopped").exists()
        return "stopped" if stopped else "done" if code == "0" else f"failed (exit {code})"
    return "running" if _alive(job.pid) else "ended"


def stop(job: Job) -> None:
    """A graceful stop: training checkpoints and writes final/ at the end of the step (train/callbacks.py
    GracefulStop); a server finishes its running requests."""
    import psutil

    if status(job) != "running":
        return
    job.file(".stopped").write_text("")
    for child in psutil.Process(job.pid).children():  # tunesmith itself; the shell stays to record its exit status
        child.send_signal(signal.SIGTERM)


def resume(workspace: Workspace, job: Job) -> Job:
    values = yaml.safe_load(job.file(".yaml").read_text(encoding="utf-8")) or {}
    values["resume"] = True
    return start(workspace, job.command, values)


def log_tail(job: Job, lines: int = 40) -> str:
    text = job.file(".log").read_text(encoding="utf-8", errors="replace") if job.file(".log").exists() else ""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:])


def metrics(job: Job) -> list[dict]:
    path = job.dir / job.folder / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return rows
