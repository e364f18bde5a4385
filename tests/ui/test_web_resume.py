"""Resume in the Runs tab offers only training runs (sft, pt, rlhf) that ended short of their end with a complete
checkpoint: not eval/export/deploy jobs, not finished runs, not runs without one. Asked to resume anything else, it
says why in the page instead of starting a job."""

import time

import pytest

from tunesmith.config.webui import WebUIConfig
from tunesmith.train.callbacks import write_manifest
from tunesmith.ui.web import jobs
from tunesmith.ui.web.workspace import Workspace

gr = pytest.importorskip("gradio", reason="pip install 'tunesmith[webui]'")


def ended(ws: Workspace, command: str, folder: str, how: str = "failed", checkpoint: str = "complete",
          final: bool = False, **values) -> jobs.Job:
    """A job whose process has ended, `how` (done, failed, stopped), its folder as training would have left it."""
    key = {"export": "output", "deploy": ""}.get(command, "output_dir")  # as app.py starts each form's job
    job = jobs.start(ws, command, {"dataset": ["uploads/data.jsonl"], **({key: folder} if key else {}), **values}, key)
    while not job.file(".exit").exists():
        time.sleep(0.05)
    job.file(".exit").write_text("0\n" if how in ("done", "stopped") else "1\n")
    if how == "stopped":
        job.file(".stopped").write_text("")
    run = ws.dir / folder
    if checkpoint:
        (run / "checkpoint-5").mkdir(parents=True, exist_ok=True)
        (run / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"weights")
        if checkpoint == "complete":
            write_manifest(run / "checkpoint-5", 5)
    if final:
        (run / "final").mkdir(parents=True, exist_ok=True)
    return job


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "tunesmith_executable", lambda: ["true"])  # each job's process ends at once
    return Workspace(tmp_path, "alice", isolated=True)


def handler(tmp_path, name: str = "resume_job"):
    """A function of the Runs tab, as the page calls it."""
    from tunesmith.ui.web.app import build_app

    app = build_app(WebUIConfig(auth=str(tmp_path / "users.yaml"), root=str(tmp_path)))
    return next(f.fn for f in app.fns.values() if f.name == name)


def test_the_resume_choices_hold_only_unfinished_training_runs_with_a_checkpoint(ws, tmp_path):
    stopped = ended(ws, "sft", "runs/stopped", "stopped", final=True)  # Stop writes final/ too: still resumable
    failed = ended(ws, "pt", "runs/failed", "failed")
    killed = ended(ws, "rlhf", "runs/killed", "failed", method="grpo")
    ended(ws, "sft", "runs/done", "done", final=True)
    ended(ws, "sft", "runs/partial", "failed", checkpoint="partial")  # killed while saving: no manifest
    ended(ws, "sft", "runs/none", "failed", checkpoint="")
    ended(ws, "eval", "exports/eval", "failed")  # a folder that even looks like a run
    ended(ws, "export", "exports/merged", "failed")
    ended(ws, "deploy", "", "failed")
    ended(ws, "sft", "runs/resumed", "stopped")
    ended(ws, "sft", "runs/resumed", "done", final=True, resume=True)  # its resume ran to the end
    assert [j.id for j in jobs.resumable(ws)] == [killed.id, failed.id, stopped.id]
    shown = handler(tmp_path, "resume_choices")(None, stopped.id, gr.Request(username="alice"))  # the page's list
    assert shown["choices"] == [killed.id, failed.id, stopped.id] and shown["value"] == stopped.id


@pytest.mark.parametrize("command, folder, said", [
    ("eval", "exports/eval", "job eval-.* is eval, not a training run"),
    ("export", "exports/merged", "job export-.* is export, not a training run"),
    ("sft", "runs/done", "runs/done finished"),
])
def test_resuming_what_cannot_resume_says_why_and_starts_nothing(ws, tmp_path, command, folder, said):
    job = ended(ws, command, folder, "done", final=command == "sft")
    with pytest.raises(gr.Error, match=f"cannot resume: {said}"):
        handler(tmp_path)(job.id, gr.Request(username="alice"))
    assert [j.id for j in jobs.jobs(ws)] == [job.id]


def test_resume_selects_the_new_job_among_the_choices(ws, tmp_path):
    stopped = ended(ws, "sft", "runs/a", "stopped", final=True)
    update = handler(tmp_path)(stopped.id, gr.Request(username="alice"))
    assert update["value"] != stopped.id and update["value"] in update["choices"]
    assert set(update["choices"]) == {stopped.id, update["value"]}
    assert "resume: true" in (tmp_path / "alice" / "jobs" / f"{update['value']}.yaml").read_text()
    assert "output_dir: runs/a" in (tmp_path / "alice" / "jobs" / f"{update['value']}.yaml").read_text()
