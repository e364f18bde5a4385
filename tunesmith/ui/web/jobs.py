"""Jobs: each is the same `tunesmith` command a user could type, in its own process and session, so closing the page
or restarting the UI does not stop it; the UI finds it again from files on disk.

    job = start(workspace, "sft", values)    # jobs/<id>.yaml (the config), jobs/<id>.json (the record), jobs/<id>.log
    status(job)                              # running | done | failed | stopped
    stop(job)                                # SIGTERM: training saves a checkpoint and final/, then exits
    resumable(workspace)                     # training runs that stopped short with a complete checkpoint
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

from tunesmith.errors import ConfigError
from tunesmith.ui.web.workspace import Workspace

TRAINING = ("sft", "pt", "rlhf")  # the commands whose folder is a run with checkpoints; eval, export, deploy have none


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
    for record in (workspace.dir / "jobs").glob("*.json"):
        try:
            found.append(Job(**json.loads(record.read_text(encoding="utf-8"))))
        except (ValueError, TypeError):
            continue
    return sorted(found, key=_stamp, reverse=True)


def _stamp(job: Job) -> str:
    """When the job started, to the microsecond: the end of its id (sorting whole ids would put every sft job before
    any rlhf or pt one)."""
    return "-".join(job.id.rsplit("-", 3)[1:])


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


# -----------------------------------------------------------------------------
# Resume: only a training run that stopped short of its end, from a complete checkpoint


def resumable(workspace: Workspace) -> list[Job]:
    """The training runs Resume can continue, newest first, each by the last job that wrote its folder: that job
    ended (stopped, failed or killed), the folder holds a complete checkpoint (train/callbacks.py is_complete), and
    the run is not finished. A graceful Stop writes final/ too, so final/ means finished unless that job was stopped."""
    latest: dict[Path, Job] = {}
    for job in jobs(workspace):  # newest first: the first job seen on a folder is the last to write it
        if job.command in TRAINING:
            latest.setdefault(_run_dir(job), job)
    return [job for job in latest.values() if _why_not_resumable(job) is None]


def _run_dir(job: Job) -> Path:
    return (job.dir / job.folder).resolve()


def _why_not_resumable(job: Job) -> str | None:
    from tunesmith.train.callbacks import is_complete  # imports transformers: only once a run is looked at

    if job.command not in TRAINING:
        return f"job {job.id} is {job.command}, not a training run; only {'/'.join(TRAINING)} runs resume"
    state = status(job)
    if state == "running":
        return f"{job.folder} is being trained now (job {job.id})"
    if (_run_dir(job) / "final").is_dir() and state != "stopped":
        return f"{job.folder} finished (its final/ is written); start a new run to train further"
    if not any(is_complete(p) for p in _run_dir(job).glob("checkpoint-*") if p.is_dir()):
        return f"{job.folder} has no complete checkpoint to resume from; start the run again instead"
    return None


def resume(workspace: Workspace, job: Job) -> Job:
    """The config of the last job on this job's run folder again, with resume: true, as a new job in that folder.
    ConfigError, saying why, for a job that is not a training run or a run that is still training, finished, or has
    no complete checkpoint."""
    if job.command in TRAINING:  # a later job (a resume) may have written the folder since
        job = next((j for j in jobs(workspace) if j.command in TRAINING and _run_dir(j) == _run_dir(job)), job)
    if why := _why_not_resumable(job):
        raise ConfigError(f"cannot resume: {why}")
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
