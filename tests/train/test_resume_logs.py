"""What an interrupted run leaves and a resume cleans: metrics.jsonl lines after the checkpoint resumed from, partial
checkpoint folders, the message Ctrl-C prints, and the reference adapter copy in final/. No training here; the
console-script runs are in tests/e2e/test_resume_cli.py."""

import json
from types import SimpleNamespace

from tunesmith.config import SFTConfig
from tunesmith.train.callbacks import Interrupted, MetricsLog, write_manifest
from tunesmith.train.run import checkpoint_to_resume, drop_reference_copy


def metrics_file(run_dir, steps, torn=False):
    lines = [json.dumps({"step": s, "total_steps": 8, "loss": 10.0 - s / 10}) for s in steps]
    text = "\n".join(lines) + "\n" + ('{"step": 7, "total_st' if torn else "")  # a kill mid-write
    (run_dir / "metrics.jsonl").write_text(text)


def logged_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def state(step, main=True):
    return SimpleNamespace(global_step=step, max_steps=8, epoch=0.5, num_input_tokens_seen=0,
                           is_world_process_zero=main)


def test_a_resume_from_checkpoint_4_drops_the_lines_logged_after_it_before_logging_again(tmp_path):
    """Killed after step 6 was logged, resumed from checkpoint-4: steps 5 and 6 were logged twice (and drawn twice
    in loss.png). The lines after the checkpoint go when training begins, and a line cut off by the kill with them."""
    metrics_file(tmp_path, range(1, 7), torn=True)
    log = MetricsLog(tmp_path)
    log.on_train_begin(None, state(4), None)  # the Trainer has loaded checkpoint-4's state: global_step 4
    assert logged_steps(tmp_path) == [1, 2, 3, 4]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()  # rewritten by rename
    for step in (5, 6):
        log.on_log(SimpleNamespace(world_size=1), state(step), None, logs={"loss": 9.0})
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_a_fresh_start_keeps_nothing_after_step_0_and_other_ranks_leave_the_file_alone(tmp_path):
    metrics_file(tmp_path, range(1, 4))
    MetricsLog(tmp_path).on_train_begin(None, state(0, main=False), None)  # rank 0 alone writes metrics.jsonl
    assert logged_steps(tmp_path) == [1, 2, 3]
    MetricsLog(tmp_path).on_train_begin(None, state(0), None)  # `resume: no complete checkpoint`: from step 0
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    MetricsLog(tmp_path / "new").on_train_begin(None, state(0), None)  # no file yet: nothing to do


def checkpoint(run_dir, step, complete=True):
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"x" * step)
    if complete:
        write_manifest(folder, step)
    return folder


def test_a_resume_removes_partial_checkpoints_and_names_them(tmp_path, caplog):
    """A partial checkpoint (killed while saving: no manifest, or one that its files no longer match) was renamed
    incomplete-checkpoint-N-PID and kept, so each interrupted save left one more folder behind."""
    checkpoint(tmp_path, 1, complete=False)  # older than a complete one: no save of this run's cut off; kept
    checkpoint(tmp_path, 2)
    four = checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 6, complete=False)
    (checkpoint(tmp_path, 8) / "adapter_model.safetensors").write_bytes(b"cut")  # a file rewritten after the manifest
    (tmp_path / "incomplete-checkpoint-3-1234").mkdir()  # set aside by an earlier release
    (tmp_path / "final-staging").mkdir()  # not a checkpoint: untouched
    cfg = SFTConfig(dataset=["x"], resume=True)
    with caplog.at_level("WARNING", logger="tunesmith"):
        assert checkpoint_to_resume(cfg, tmp_path) == str(four)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-4", "final-staging"]
    for name in ("checkpoint-6", "checkpoint-8", "incomplete-checkpoint-3-1234"):
        assert f"{tmp_path / name} is incomplete (killed while saving); removing it" in caplog.text

    checkpoint(tmp_path, 6, complete=False)
    assert checkpoint_to_resume(cfg, tmp_path, set_aside=False) == str(four)  # a rank that did not prepare the folder
    assert (tmp_path / "checkpoint-6").is_dir()
    explicit = SFTConfig(dataset=["x"], resume=str(tmp_path / "checkpoint-2"))  # --resume PATH cleans the folder too
    assert checkpoint_to_resume(explicit, tmp_path) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-6").exists()


def test_ctrl_c_names_the_checkpoint_to_resume_from(tmp_path):
    nothing = str(Interrupted(tmp_path, 1))
    assert nothing == (f"interrupted at step 1; nothing was saved (no complete checkpoint in {tmp_path} yet): run the "
                       "same command with --resume to start again from step 0")
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 12, complete=False)  # Ctrl-C came while the Trainer saved it
    said = str(Interrupted(tmp_path, 12))
    assert said == (f"interrupted at step 12; the last checkpoint is {tmp_path / 'checkpoint-10'} ("
                    f"{tmp_path / 'checkpoint-12'} cut off while saving: --resume removes it): run the same command "
                    "with --resume to continue")
    assert isinstance(Interrupted(tmp_path, 12), KeyboardInterrupt)  # whoever catches Ctrl-C still does


def test_final_keeps_the_trained_adapter_and_drops_the_reference_copy(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_config.json").write_text("{}")
    drop_reference_copy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]
    (tmp_path / "ref").mkdir()  # not a peft adapter (a user's folder named ref): kept
    drop_reference_copy(tmp_path)
    assert (tmp_path / "ref").is_dir()
