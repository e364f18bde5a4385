"""Ctrl-C in `tunesmith rlhf --method ppo`, through the console script's main() in this process. Before: PPO's own
loop printed a bare "interrupted" (sft, dpo and the other Trainer runs name the step and the checkpoint, exit 130),
and a Ctrl-C while final/ was being written left .final-staging behind. Now the message names the step reached and
says that nothing was saved (ppo writes no checkpoints, so the same command starts again, no --resume), exit 130."""

import json

import pytest
from transformers import TrainerCallback

from tunesmith import api
from tunesmith.cli import main as cli

WORDS = ["apple", "river", "stone", "cloud"]


class CtrlCAt(TrainerCallback):
    """Ctrl-C once `step` has finished (Python's SIGINT handler raises KeyboardInterrupt where the loop is)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.fixture
def ppo_args(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"code for {w}"}]}) + "\n"
                            for w in WORDS))
    run = tmp_path / "ppo"
    return run, ["rlhf", "--method", "ppo", "--model", str(tiny), "--dataset", str(data), "--rewards.funcs", "length",
                 "--rollout.max-completion-length", "2", "--batch-size", "2", "--ppo.epochs", "1",
                 "--logging-steps", "1", "--report-to", "none", "--output-dir", str(run)]


def tunesmith(args, capsys, monkeypatch, callbacks=None):
    cfg_cls, _, about = cli.COMMANDS["rlhf"]
    monkeypatch.setitem(cli.COMMANDS, "rlhf", (cfg_cls, lambda cfg: api.rlhf(cfg, callbacks=callbacks), about))
    capsys.readouterr()
    code = cli.main(args)
    return code, capsys.readouterr().err


def test_ctrl_c_names_the_step_and_that_the_run_starts_again(ppo_args, capsys, monkeypatch):
    run, args = ppo_args
    code, err = tunesmith([*args, "--max-steps", "2"], capsys, monkeypatch, [CtrlCAt(1)])
    assert code == 130 and "Traceback" not in err
    assert ("interrupted at step 1; nothing was saved (ppo writes no checkpoints): run the same command again to "
            "start from step 0") in err
    assert not (run / "final").exists() and not (run / ".final-staging").exists()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (run / "loss.png").exists()  # the curve so far (it was drawn only at a run's end)

    code, err = tunesmith([*args, "--max-steps", "2"], capsys, monkeypatch)  # the same command, as the message says
    assert code == 0, err
    assert (run / "final" / "value_head.safetensors").exists()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in line] == [1, 2]  # the restart logged each step once


def test_ctrl_c_while_final_is_written_leaves_no_half_written_folder(ppo_args, capsys, monkeypatch):
    from tunesmith.train import run as run_module

    run, args = ppo_args
    seen = {}

    def ctrl_c_mid_save(folder):  # called once the adapter and value head are in the staging folder
        seen["staged"] = sorted(p.name for p in folder.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "drop_reference_copy", ctrl_c_mid_save)
    code, err = tunesmith([*args, "--max-steps", "1"], capsys, monkeypatch)
    assert "value_head.safetensors" in seen["staged"]  # the save was under way
    assert not (run / ".final-staging").exists() and not (run / "final").exists()
    assert code == 130 and "Traceback" not in err
    assert "interrupted at step 1; nothing was saved (ppo writes no checkpoints)" in err
