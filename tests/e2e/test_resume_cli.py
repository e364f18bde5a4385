"""Interrupted runs through the console script's main(): Ctrl-C says which checkpoint `--resume` continues from, a
resume leaves each step once in metrics.jsonl and no partial checkpoint behind, and a continued DPO/KTO run's final/
holds only the trained adapter."""

import json
import os
import signal

import pytest

from e2e_cli import WORDS, read_metrics, run_main


def steps_logged(run):
    return [m["step"] for m in read_metrics(run) if "loss" in m]


def test_a_resume_logs_each_step_once_and_removes_the_checkpoint_cut_off_while_saving(tiny_model, toy_data, tmp_path):
    """A run killed while saving checkpoint-6, after step 6 was logged: the resume starts from checkpoint-4, so
    steps 5 and 6 were in metrics.jsonl twice (and in loss.png), and checkpoint-6 was set aside, never removed."""
    run = tmp_path / "run"
    args = ["sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "6", "--batch-size", "2",
            "--save-steps", "2", "--logging-steps", "1", "--report-to", "none", "--output-dir", run]
    run_main(*args)
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    import shutil

    shutil.rmtree(run / "final")  # the kill came before final/
    (run / "checkpoint-6" / "tunesmith_manifest.json").unlink()  # ... while checkpoint-6 was being written
    resumed = run_main(*args, "--resume")
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    # steps 5 and 6 and the first run's summary line (train_runtime, at step 6)
    assert "metrics.jsonl: dropped 3 line(s) logged after step 4" in (run / "train.log").read_text()
    assert f"{run / 'checkpoint-6'} is incomplete (killed while saving); removing it" in resumed.stderr
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert (run / "checkpoint-6" / "tunesmith_manifest.json").exists() and (run / "loss.png").exists()


def test_ctrl_c_says_which_checkpoint_resume_continues_from(tiny_model, toy_data, tmp_path, monkeypatch,
                                                          ctrl_c_raises):
    """Ctrl-C printed "interrupted" and nothing else: not where the run stood, nor that --resume continues it."""
    from transformers import TrainerCallback

    from tunesmith import api
    from tunesmith.cli import main as cli

    class CtrlCAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == self.step:
                os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt in the training loop

    cfg_cls, _, about = cli.COMMANDS["sft"]
    sigterm = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    args = ["sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "6", "--batch-size", "2",
            "--logging-steps", "1", "--report-to", "none", "--output-dir", run]
    monkeypatch.setitem(cli.COMMANDS, "sft", (cfg_cls, lambda cfg: api.sft(cfg, callbacks=[CtrlCAt(1)]), about))
    early = run_main(*args, "--save-steps", "2", check=False)
    assert early.returncode == 130 and "Traceback" not in early.stderr
    assert (f"interrupted at step 1; nothing was saved (no complete checkpoint in {run} yet): run the same command "
            "with --resume to start again from step 0") in early.stderr

    monkeypatch.setitem(cli.COMMANDS, "sft", (cfg_cls, lambda cfg: api.sft(cfg, callbacks=[CtrlCAt(3)]), about))
    stopped = run_main(*args, "--save-steps", "2", "--resume", check=False)
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    assert (f"interrupted at step 3; the last checkpoint is {run / 'checkpoint-2'}: run the same command with "
            "--resume to continue") in stopped.stderr
    assert signal.getsignal(signal.SIGTERM) is sigterm and not (run / "final").exists()  # GracefulStop's undone
    assert (run / "loss.png").exists()  # the curve up to step 3 (it was drawn only at a run's end)

    monkeypatch.setitem(cli.COMMANDS, "sft", (cfg_cls, api.sft, about))
    resumed = run_main(*args, "--save-steps", "2", "--resume")
    assert f"saved {run}/final (6 steps" in resumed.stdout and steps_logged(run) == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def sft_adapter(tiny_model, toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("sft") / "run"
    run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "1", "--report-to", "none",
             "--output-dir", run)
    return run / "final"


@pytest.mark.parametrize("method, start", [("dpo", "adapters"), ("kto", "adapters"), ("dpo", "model")])
def test_a_preference_run_saves_only_the_trained_adapter(method, start, sft_adapter, tiny_model, tmp_path):
    """TRL keeps the starting adapter (continued with --adapters, or a fresh LoRA's) as peft's second adapter "ref",
    and final/ref/ was saved beside the result (GRPO alone removed it, after lineage.json had listed its files)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"code for {w}", "chosen": f"CODE {w} OK",
                                           "rejected": f"CODE {w} NO"}) for w in WORDS))
    run = tmp_path / method
    origin = ["--adapters", sft_adapter] if start == "adapters" else ["--model", tiny_model]
    run_main("rlhf", "--method", method, *origin, "--dataset", pairs, "--max-steps", "1",
             "--batch-size", "2", "--save-steps", "1", "--report-to", "none", "--output-dir", run)
    final = run / "final"
    assert not (final / "ref").exists()
    assert (run / "checkpoint-1" / "ref" / "adapter_config.json").exists()  # a resume needs the reference
    listed = json.loads((final / "lineage.json").read_text())["files"]
    assert not any(name.startswith("ref/") for name in listed)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), final)
    assert list(model.peft_config) == ["default"]
    from safetensors.torch import load_file

    trained = load_file(final / "adapter_model.safetensors")
    saved = load_file(run / "checkpoint-1" / "adapter_model.safetensors")
    assert trained.keys() == saved.keys() and all(torch.equal(trained[k], saved[k]) for k in trained)  # the trained one
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size
