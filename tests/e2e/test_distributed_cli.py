"""Several processes on CPU (gloo), through the console script: torchrun started by `--nproc-per-node 2`, and an outer
torchrun around the Python API (the one-process runs they are compared with go through the console script's main() in
this process). The loss of 2 processes x batch 2 equals 1 process x batch 4 (DDP, FSDP2 sharding
each rank's half of the weights, ZeRO-3); the final folder is one consolidated adapter or model; a hung rank is found
by the watchdog, and the run it stopped resumes; FSDP2's checkpoints resume at another world size.

Each launch of 2 ranks costs ~40 CPU-seconds of imports (the console script, torchrun, two ranks) and well under a
second of training, so one launch checks everything its run shows: DDP's is the resume of the run a hung rank stopped."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from e2e_cli import read_metrics, run_cli, run_main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


COMMON = ["--max-steps", "4", "--logging-steps", "1", "--report-to", "none", "--device", "cpu", "--learning-rate", "1e-2"]


@pytest.fixture(scope="module")
def single(tiny_model, toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--batch-size", "4", "--output-dir", run, *COMMON)
    return losses(run)


FSDP2 = ["--fsdp", "full-shard", "--gradient-checkpointing", "true"]  # with FSDP's own activation checkpointing


def shard_reports(run_dir):
    """What each rank logged once FSDP2 had sharded the model (train/callbacks.py ShardReport)."""
    pattern = re.compile(r"fsdp2: rank (\d+) holds (\d+) of (\d+) parameter bytes .*?, (\d+) parameters as DTensor "
                         r"shards, (\d+) layers under activation checkpointing")
    logs = [run_dir / "train.log", *sorted((run_dir / "logs").glob("rank-*.log"))]
    return [tuple(map(int, m.groups())) for log in logs for m in pattern.finditer(log.read_text())]


def assert_two_processes_trained_as_one(proc, run, single, name, model, rank1_plans=0):
    """What a run of 2 ranks started by the console script (proc) shows in its folder: the losses of one process with
    the same global batch, rank 0 speaking for the run and rank 1 logging into logs/rank-1.log (rank1_plans: the memory
    plans an earlier run of this folder left there), the layout in config.yaml, the per-process speed, and final/ one
    plain adapter that peft loads."""
    assert losses(run) == pytest.approx(single, abs=1e-4)
    assert proc.stderr.count("memory plan:") == 1  # rank 0 speaks for the run; rank 1 logs into logs/rank-1.log
    assert (run / "logs" / "rank-1.log").read_text().count("memory plan:") == rank1_plans + 1
    resolved = yaml.safe_load((run / "config.yaml").read_text())["_resolved"]
    assert resolved["layout"]["processes"] == 2 and resolved["layout"]["engine"] == name
    metrics = read_metrics(run)[-2]
    assert metrics["processes"] == 2 and metrics["tokens_per_s_per_gpu"] == pytest.approx(metrics["tokens_per_s"] / 2, abs=0.2)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), run / "final")  # one plain adapter
    assert any(p.abs().sum() > 0 for n, p in adapter.named_parameters() if "lora_B" in n)


# DDP's run is in test_a_hung_rank_is_dumped_by_the_watchdog_and_ddp_resumes_to_the_losses_of_one_process
@pytest.mark.parametrize("engine, name", [(FSDP2, "fsdp2 full-shard"), (["--deepspeed", "zero3"], "deepspeed zero3")],
                         ids=["fsdp2", "zero3"])
def test_two_processes_train_as_one_with_the_same_global_batch(engine, name, single, tiny_model, toy_data, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("sft", "--model", tiny_model, "--dataset", toy_data, "--batch-size", "2", "--nproc-per-node", "2",
                   "--master-port", free_port(), "--output-dir", run, *COMMON, *engine)
    assert_two_processes_trained_as_one(proc, run, single, name, tiny_model)
    if name.startswith("fsdp2"):  # really sharded on the CPU ranks: each holds half the weights, as DTensor shards
        reports = shard_reports(run)
        assert sorted(r[0] for r in reports) == [0, 1]
        for _, local, whole, shards, checkpointed in reports:
            assert local == pytest.approx(whole / 2, rel=0.01) and shards > 0 and checkpointed == 2  # both layers


def test_fsdp2_full_weights_train_as_one_process_and_resume_at_another_world_size(tiny_model, toy_data, tmp_path):
    """Full fine-tune on 2 sharded ranks = 1 process with the same global batch; final/ is one plain HF folder (the
    single run's weights) that infer loads; its checkpoints (torch distributed checkpoint) resume on 1 rank (2 -> 1),
    and that run's on 2 (1 -> 2)."""
    args = ["sft", "--model", tiny_model, "--dataset", toy_data, "--tuner", "full", "--max-steps", "6",
            "--save-steps", "2", "--logging-steps", "1", "--report-to", "none", "--device", "cpu",
            "--learning-rate", "1e-3"]
    two = ["--batch-size", "2", "--nproc-per-node", "2"]
    run_main(*args, "--batch-size", "4", "--output-dir", tmp_path / "one")  # the one-process reference
    run_cli(*args, *two, "--fsdp", "full-shard", "--master-port", free_port(), "--output-dir", tmp_path / "two")
    whole = losses(tmp_path / "two")
    assert whole == pytest.approx(losses(tmp_path / "one"), abs=1e-4) and len(whole) == 6
    assert [r[1] / r[2] for r in shard_reports(tmp_path / "two")] == pytest.approx([0.5, 0.5], rel=0.01)
    assert (tmp_path / "two" / "checkpoint-2" / "pytorch_model_fsdp_0" / ".metadata").is_file()  # DCP, not one file

    from safetensors.torch import load_file

    final = load_file(tmp_path / "two" / "final" / "model.safetensors")  # consolidated: whole tensors
    single = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert all(final[k].shape == v.shape and (final[k] - v).abs().max() < 1e-4 for k, v in single.items())
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")  # a plain HF folder, as infer loads it
    assert (loaded.model.embed_tokens.weight - single["model.embed_tokens.weight"]).abs().max() < 1e-4

    down = tmp_path / "down"  # 2 -> 1: the checkpoint of step 2, resumed by one FSDP2 process
    down.mkdir()
    shutil.copytree(tmp_path / "two" / "checkpoint-2", down / "checkpoint-2")
    # launched from this process (run_main): torchrun and its one rank are processes of their own all the same; what
    # this step tests is the checkpoint's resharding, which the console script's process has no part in
    proc = run_main(*args, "--batch-size", "4", "--fsdp", "full-shard", "--master-port", free_port(),
                    "--output-dir", down, "--resume", env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                                                           "TOKENIZERS_PARALLELISM": "false"})
    assert "written by 2 process(es), this run has 1" in (down / "train.log").read_text(), proc.stderr[-2000:]
    assert losses(down) == pytest.approx(whole[2:], abs=1e-4)
    assert json.loads((down / "checkpoint-4" / "tunesmith_manifest.json").read_text())["world_size"] == 1

    up = tmp_path / "up"  # 1 -> 2: the one process's checkpoint of step 4, resumed by two
    up.mkdir()
    shutil.copytree(down / "checkpoint-4", up / "checkpoint-4")
    run_cli(*args, *two, "--fsdp", "full-shard", "--master-port", free_port(), "--output-dir", up, "--resume")
    assert losses(up) == pytest.approx(whole[4:], abs=1e-4)


HANG = textwrap.dedent("""
    import os, sys, time
    from transformers import TrainerCallback
    from tunesmith import SFTConfig, sft

    class Hang(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == int(sys.argv[2]) and os.environ["RANK"] == "1":
                time.sleep(120)                             # one rank hangs: the others wait in the next collective

    sft(SFTConfig(model=sys.argv[1], dataset=[sys.argv[3]], batch_size=2, max_steps=4, save_steps=2, logging_steps=1,
                  report_to=["none"], device="cpu", learning_rate=1e-2, output_dir=sys.argv[4], watchdog_timeout=6),
        callbacks=[Hang()])
""")


def torchrun(script, *args, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           f"--master-port={port}", str(script), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_hung_rank_is_dumped_by_the_watchdog_and_ddp_resumes_to_the_losses_of_one_process(single, tiny_model,
                                                                                               toy_data, tmp_path):
    """One DDP run (LoRA, 2 ranks x batch 2) three ways: rank 1 hangs after step 3 under an outer torchrun (the Python
    API); the watchdog dumps its stack and ends it at once (os._exit: a rank dead without cleanup, as a kill leaves
    it), which ends the run; `tunesmith sft --nproc-per-node 2 --resume` then trains steps 3-4 from checkpoint-2.
    Steps 1-2 (the hung run's) and 3-4 (the resumed run's) are the one process's with batch 4."""
    script = tmp_path / "train.py"
    script.write_text(HANG)
    run = tmp_path / "run"
    started = time.monotonic()
    hung = torchrun(script, tiny_model, 3, toy_data, run, port=free_port())  # an outer launcher
    assert hung.returncode != 0 and time.monotonic() - started < 90  # not the 120 s sleep, not NCCL's 30 minutes
    dump = (run / "hang-rank-1.txt").read_text()
    assert "no finished step for" in dump and "on_step_end" in dump  # the stack shows where rank 1 stopped
    assert not (run / "final").exists() and not (run / "checkpoint-4").exists()
    assert json.loads((run / "checkpoint-2" / "tunesmith_manifest.json").read_text())["world_size"] == 2
    before = [m for m in read_metrics(run) if m["step"] <= 2]
    rank1_plans = (run / "logs" / "rank-1.log").read_text().count("memory plan:")

    proc = run_cli("sft", "--model", tiny_model, "--dataset", toy_data, "--batch-size", "2", "--nproc-per-node", "2",
                   "--save-steps", "2", "--master-port", free_port(), "--output-dir", run, "--resume", *COMMON)
    assert [m for m in read_metrics(run) if m["step"] <= 2] == before  # resumed at step 3, not trained again from 0
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2, 3, 4]
    assert_two_processes_trained_as_one(proc, run, single, "ddp", tiny_model, rank1_plans)


def test_layouts_that_cannot_run_are_refused_before_any_process_starts(tiny_model, toy_data, tmp_path):
    base = ["sft", "--model", tiny_model, "--dataset", toy_data, "--output-dir", tmp_path / "x", "--device", "cpu"]
    cases = [(["--nnodes", "2", "--node-rank", "2"], "node_rank: 2 with nnodes 2"),
             (["--nnodes", "2"], "master_addr: a job on several nodes needs the address of node 0"),
             (["--nproc-per-node", "2", "--tuner", "qlora", "--deepspeed", "zero3"], "4-bit QLoRA weights cannot be sharded"),
             (["--nproc-per-node", "2", "--sequence-parallel", "2"], "sequence_parallel: needs --deepspeed"),
             (["--deepspeed", "zero2", "--fsdp", "full-shard"], "choose DeepSpeed or FSDP, not both"),
             (["--fsdp", "full-shard", "--fsdp-offload"], "CPU processes keep them in CPU RAM already")]
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        cases.append((["--nproc-per-node", "2", "--master-port", str(busy.getsockname()[1])], "is in use on this machine"))
        for flags, message in cases:  # in this process (run_main): a refusal starts no process to observe
            proc = run_main(*base, *flags, check=False)
            assert proc.returncode != 0 and message in proc.stderr, (flags, proc.stderr[-500:])
            assert "launching" not in proc.stderr
    # the peers' variables count (read from the environment when main() runs; an exception would fail the test here)
    env_layout = run_main(*base, check=False, env={"NNODES": "2", "NODE_RANK": "1"})
    assert env_layout.returncode != 0 and "master_addr: a job on several nodes" in env_layout.stderr
    assert "Traceback" not in env_layout.stderr and "launching" not in env_layout.stderr
    ppo = run_main("rlhf", "--method", "ppo", "--model", tiny_model, "--dataset", toy_data, "--rewards.funcs", "length",
                   "--nproc-per-node", "2", "--output-dir", tmp_path / "p", check=False)
    assert ppo.returncode != 0 and "ppo runs in one process" in ppo.stderr


def test_an_alignment_method_trains_on_two_processes_as_on_one(tiny_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost"]
    pairs.write_text("\n".join(json.dumps({"prompt": f"code for {w}", "chosen": f"CODE {w} OK", "rejected": f"CODE {w} NO"})
                               for w in words))
    common = ["rlhf", "--method", "dpo", "--model", tiny_model, "--dataset", pairs, "--dpo.beta", "0.5", *COMMON]
    run_main(*common, "--batch-size", "4", "--output-dir", tmp_path / "one")
    run_cli(*common, "--batch-size", "2", "--nproc-per-node", "2", "--master-port", free_port(),
            "--output-dir", tmp_path / "two")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    assert (tmp_path / "two" / "final" / "adapter_model.safetensors").exists()
