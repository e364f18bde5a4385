"""Tensor parallel and sequence parallel over 2 CPU processes (gloo), through the console script: each trains to the
single process's losses on the same batches. --tensor-parallel 2 shards every layer's linears (transformers' DTensor
plan) and saves one plain model; --sequence-parallel 2 (DeepSpeed's Ulysses) hands each rank half of every sequence.
What the processes see is recorded by a forward pre-hook that a sitecustomize.py on PYTHONPATH installs in each of
them (it only writes shapes down); the one-process reference runs in this process, the same hook installed around it."""

import os
import socket
import textwrap
from types import SimpleNamespace

import pytest
import yaml
from e2e_cli import read_metrics, run_cli, run_main
from tiny import make_tiny_model

HOOK = textwrap.dedent("""
    import os

    def record_shapes(log_dir, rank):
        \"\"\"Per forward: the embedding's input length, gate_proj's local weight shape. Returns the handle.\"\"\"
        import torch

        def _record(module, args):
            if isinstance(module, torch.nn.Embedding) and torch.is_tensor(args[0]):
                line = f"tokens {args[0].shape[-1]}"
            elif isinstance(module, torch.nn.Linear) and module.weight.shape == (128, 64):  # gate_proj: 128 x 64
                local = getattr(module.weight, "to_local", lambda: module.weight)()
                line = f"gate_proj {type(module.weight).__name__} {tuple(local.shape)}"
            else:
                return
            with open(os.path.join(log_dir, f"rank-{rank}.txt"), "a") as f:
                f.write(line + "\\n")

        return torch.nn.modules.module.register_module_forward_pre_hook(_record)

    if os.environ.get("SEQ_LOG"):
        record_shapes(os.environ["SEQ_LOG"], os.environ.get("RANK", "single"))
""")
COMMON = ["--tuner", "full", "--batch-size", "2", "--max-steps", "3", "--logging-steps", "1", "--report-to", "none",
          "--device", "cpu", "--learning-rate", "1e-2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


def seen(log_dir, rank, what):
    return [line.split(" ", 1)[1] for line in (log_dir / f"rank-{rank}.txt").read_text().splitlines()
            if line.startswith(what)]


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-kv2", num_key_value_heads=2)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(environment that installs the recording hook, a fresh folder for each run's records)."""
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(HOOK)

    def env(name):
        logs = tmp_path_factory.mktemp(name)
        path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
        return {"PYTHONPATH": path, "SEQ_LOG": str(logs)}, logs
    return env


@pytest.fixture(scope="module")
def single(tp_model, toy_data, traced, tmp_path_factory):
    """The one-process reference, in this process (run_main) with the same hook installed for its length: what it
    records is the ranks' reference, not the thing tested (a process of its own costs ~15 CPU-seconds of imports)."""
    _, logs = traced("single-log")
    run = tmp_path_factory.mktemp("single") / "run"
    hook = {}
    exec(HOOK, hook)  # the sitecustomize's own code, its function only (SEQ_LOG is not set here)
    handle = hook["record_shapes"](str(logs), "single")
    try:
        run_main("sft", "--model", tp_model, "--dataset", toy_data, "--output-dir", run, *COMMON)
    finally:
        handle.remove()
    return run, logs


def test_tensor_parallel_2_trains_as_one_process_and_saves_one_plain_model(single, tp_model, toy_data, traced, tmp_path):
    env, logs = traced("tp-log")
    run = tmp_path / "run"
    run_cli("sft", "--model", tp_model, "--dataset", toy_data, "--nproc-per-node", "2", "--tensor-parallel", "2",
            "--master-port", free_port(), "--output-dir", run, *COMMON, env=env)
    assert losses(run) == pytest.approx(losses(single[0]), abs=1e-4)
    for rank in (0, 1):  # each rank holds half of every gate_proj and runs the whole batch
        assert set(seen(logs, rank, "gate_proj")) == {"DTensor (64, 64)"}
        assert seen(logs, rank, "tokens") == seen(single[1], "single", "tokens")
    layout = yaml.safe_load((run / "config.yaml").read_text())["_resolved"]["layout"]
    assert layout["engine"] == "tensor parallel 2" and layout["tensor_parallel"] == 2

    import torch
    from transformers import AutoModelForCausalLM

    sharded = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()  # plain transformers, one file
    whole = AutoModelForCausalLM.from_pretrained(single[0] / "final").state_dict()
    assert sharded.keys() == whole.keys()
    assert all(torch.allclose(sharded[k], whole[k], atol=1e-5) for k in whole)
    assert not torch.allclose(whole["model.layers.0.mlp.gate_proj.weight"],
                              AutoModelForCausalLM.from_pretrained(tp_model).state_dict()["model.layers.0.mlp.gate_proj.weight"])


def test_sequence_parallel_2_gives_each_rank_half_of_every_sequence(single, tp_model, toy_data, traced, tmp_path):
    env, logs = traced("sp-log")
    run = tmp_path / "run"
    run_cli("sft", "--model", tp_model, "--dataset", toy_data, "--nproc-per-node", "2", "--sequence-parallel", "2",
            "--deepspeed", "zero2", "--master-port", free_port(), "--output-dir", run, *COMMON, env=env)
    assert losses(run) == pytest.approx(losses(single[0]), abs=1e-4)
    whole = [int(n) for n in seen(single[1], "single", "tokens")]
    for rank in (0, 1):
        assert [int(n) for n in seen(logs, rank, "tokens")] == [-(-n // 2) for n in whole]
    assert yaml.safe_load((run / "config.yaml").read_text())["_resolved"]["layout"]["sequence_parallel"] == 2


def test_tensor_parallel_layouts_that_cannot_run_are_refused_before_any_process_starts(tiny_model, toy_data, tmp_path):
    base = ["sft", "--model", tiny_model, "--dataset", toy_data, "--output-dir", tmp_path / "x", "--device", "cpu",
            "--nproc-per-node", "2", "--master-port", free_port()]
    cases = [(["--tensor-parallel", "2"], "peft's adapters do not run on tensor-parallel layers"),
             (["--tuner", "full", "--tensor-parallel", "2"], "num_key_value_heads 1 does not split over 2")]
    for flags, message in cases:  # in this process (run_main): a refusal starts no process to observe
        proc = run_main(*base, *flags, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (flags, proc.stderr[-800:])
        assert "launching" not in proc.stderr


def test_tensor_parallel_checks_in_process(tmp_path):
    from pydantic import ValidationError

    from tunesmith.config.commands import SFTConfig
    from tunesmith.errors import ConfigError
    from tunesmith.train import launch

    full = {"dataset": ["x.jsonl"], "tuner": "full", "tensor_parallel": 2}
    for extra, message in [({"deepspeed": "zero3"}, "AutoTP"), ({"fsdp": "full-shard"}, "drop --fsdp"),
                           ({"resume": True}, "cannot resume"), ({"tuner": "qlora"}, "--fsdp full-shard or --deepspeed")]:
        with pytest.raises(ValidationError, match=message):
            SFTConfig(**{**full, **extra})
    cfg = SFTConfig(**full)
    for world in (1, 3):
        with pytest.raises(ConfigError, match="needs a multiple of 2 processes"):
            launch.check_engine(cfg, world)
    launch.check_engine(cfg, 4)  # 2 x 2: the other ranks shard with FSDP2 (transformers' own)
    packed = SFTConfig(dataset=["x.jsonl"], deepspeed="zero2", sequence_parallel=2, packing=True)
    with pytest.raises(ConfigError, match="Ulysses splits padded sequences"):
        launch.check_engine(packed, 2)
    context = SFTConfig(dataset=["x.jsonl"], fsdp="full-shard", sequence_parallel=2, device="cpu")
    with pytest.raises(ConfigError, match="context parallel \\(with --fsdp\\) runs on GPUs only"):
        launch.check_engine(context, 2)
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=64, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="gpt2 models have no tensor-parallel plan"):
        launch.check_tensor_parallel_model(tmp_path / "gpt2", 2)


def test_accelerate_still_refuses_tensor_parallel_on_cpu_processes():
    """models/patches/accelerate_tp.py is still needed, and keeps accelerate's own size check."""
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DistributedType

    from tunesmith.models.patches.accelerate_tp import cpu_tensor_parallel

    cpu = SimpleNamespace(multi_device=False, is_fsdp2=False, distributed_type=DistributedType.MULTI_CPU,
                          num_processes=2, is_main_process=True)
    with pytest.raises(ValueError, match="MULTI_CPU"):
        ParallelismConfig(tp_size=2)._validate_accelerator(cpu)
    cpu_tensor_parallel(2, 1)._validate_accelerator(cpu)
    with pytest.raises(ValueError, match="does not match num_processes"):
        cpu_tensor_parallel(2, 2)._validate_accelerator(cpu)
