"""train/launch.py without processes: the layout from flags and the peers' variables, the engines' arguments."""

import pytest

from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.train import launch


def test_flags_win_over_the_peers_environment_variables(monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "8")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    assert launch.layout(SFTConfig(dataset=["x"])) == launch.Layout(8, 2, 0, "node0", 29500)
    flagged = load(SFTConfig, ["--dataset", "x", "--nproc-per-node", "4"])
    assert launch.layout(flagged).world_size == 8 and launch.needs_launch(flagged)
    monkeypatch.setenv("WORLD_SIZE", "16")  # inside a rank (torchrun set it): never launch again
    monkeypatch.setenv("RANK", "3")
    assert not launch.needs_launch(flagged) and launch.rank() == 3 and not launch.is_main()


def test_slurm_tasks_become_ranks(monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env |= {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7"}
    monkeypatch.setattr(os, "environ", env)  # srun's variables, as each of its tasks sees them
    assert launch.world_size() == 8 and launch.rank() == 5
    assert env["LOCAL_RANK"] == "1" and env["MASTER_ADDR"] == "10.0.0.7"


def test_deepspeed_presets_leave_the_batch_and_precision_to_our_config(tmp_path):
    zero3 = launch.deepspeed_config("zero3-offload")
    assert zero3["zero_optimization"]["stage"] == 3 and zero3["train_micro_batch_size_per_gpu"] == "auto"
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # final/ is one consolidated folder
    assert zero3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert [launch.deepspeed_stage(p) for p in launch.DEEPSPEED_PRESETS] == [1, 2, 3, 2, 3]
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError, match=r"ds.json:1: not valid JSON"):
        launch.deepspeed_config(str(bad))
    with pytest.raises(ConfigError, match="neither a preset"):
        launch.deepspeed_config("zero4")


def test_engine_arguments(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    fsdp = launch.engine_args(SFTConfig(dataset=["x"], fsdp="shard-grad-op", gradient_checkpointing=True))
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["reshard_after_forward"] is False
    assert fsdp["fsdp_config"]["state_dict_type"] == "SHARDED_STATE_DICT"  # checkpoints through torch DCP
    assert fsdp["ddp_find_unused_parameters"] is False  # adapters: no search for unused weights every step
    # adapters checkpoint through transformers (peft 0.21 saves an empty adapter under FSDP's checkpoint wrapper),
    # full weights through FSDP's own wrapper; never both (transformers refuses that)
    from tunesmith.train.speed import speed_args

    lora = SFTConfig(dataset=["x"], fsdp="full-shard", gradient_checkpointing=True)
    full = SFTConfig(dataset=["x"], fsdp="full-shard", gradient_checkpointing=True, tuner="full")
    assert not launch.engine_args(lora)["fsdp_config"]["activation_checkpointing"]
    assert speed_args(lora, "cpu")["activation_checkpointing"]
    assert launch.engine_args(full)["fsdp_config"]["activation_checkpointing"]
    assert not speed_args(full, "cpu")["activation_checkpointing"]
    full = launch.engine_args(SFTConfig(dataset=["x"], tuner="full", deepspeed="zero2"))
    assert "ddp_find_unused_parameters" not in full and full["deepspeed"]["zero_optimization"]["stage"] == 2


def test_plan_takes_the_same_layout_flags_as_training(capsys):
    from tunesmith import api
    from tunesmith.config import PlanConfig

    one = api.plan(load(PlanConfig, ["qwen2.5-7b-instruct", "--tuner", "full", "--gpu-memory", "40", "--json"]))
    eight = api.plan(load(PlanConfig, ["qwen2.5-7b-instruct", "--tuner", "full", "--gpu-memory", "40", "--json",
                                       "--nproc-per-node", "8", "--deepspeed", "zero3"]))
    assert one["world_size"] == 1 and eight["world_size"] == 8  # one process unless asked, as `tunesmith sft` runs
    assert not one["fits"] and eight["fits"]  # 7B full weights + Adam: too big for one 40 GB GPU, fine over 8 with ZeRO-3
    assert "--nproc-per-node 8 --deepspeed zero3" in eight["command"]
    sp = api.plan(load(PlanConfig, ["qwen2.5-7b-instruct", "--tuner", "lora", "--gpu-memory", "80", "--json",
                                    "--max-length", "32768", "--nproc-per-node", "4", "--deepspeed", "zero3",
                                    "--sequence-parallel", "4", "--batch-size", "1", "--gradient-checkpointing", "true"]))
    whole = api.plan(load(PlanConfig, ["qwen2.5-7b-instruct", "--tuner", "lora", "--gpu-memory", "80", "--json",
                                       "--max-length", "32768", "--nproc-per-node", "4", "--deepspeed", "zero3",
                                       "--batch-size", "1", "--gradient-checkpointing", "true"]))
    assert sp["asked"]["estimate"]["breakdown_gib"]["activations"] < whole["asked"]["estimate"]["breakdown_gib"]["activations"] / 2


def test_a_checkpoint_resumes_on_the_engine_that_wrote_it(tmp_path, monkeypatch):
    """FSDP2's checkpoints (torch distributed checkpoint) resume at any world size, and only with --fsdp; DeepSpeed's at
    the same world size; a plain checkpoint is not taken by FSDP2."""
    import json

    from tunesmith.train.callbacks import write_manifest
    from tunesmith.train.run import check_world_size

    sharded, plain = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    (sharded / "pytorch_model_fsdp_0").mkdir(parents=True)
    (sharded / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    plain.mkdir()
    (plain / "adapter_model.safetensors").write_bytes(b"x")
    write_manifest(sharded, 2, world_size=2)
    write_manifest(plain, 4, world_size=2)
    assert json.loads((sharded / "tunesmith_manifest.json").read_text())["world_size"] == 2
    fsdp = SFTConfig(dataset=["x"], fsdp="full-shard")
    check_world_size(fsdp, sharded)  # 2 -> 1: resharded as it loads
    monkeypatch.setenv("WORLD_SIZE", "3")
    check_world_size(fsdp, sharded)  # 2 -> 3
    with pytest.raises(ConfigError, match="holds FSDP2 shards .* resume it with --fsdp"):
        check_world_size(SFTConfig(dataset=["x"]), sharded)
    with pytest.raises(ConfigError, match="written without --fsdp; resume it without --fsdp"):
        check_world_size(fsdp, plain)
    with pytest.raises(ConfigError, match="written by 2 process\\(es\\), this run has 3; DeepSpeed's"):
        check_world_size(SFTConfig(dataset=["x"], deepspeed="zero2"), plain)


def test_a_missing_or_broken_deepspeed_file_is_named_not_a_traceback(tmp_path):
    """`sft --deepspeed /nonexist.json` was a FileNotFoundError traceback from the stage lookup in the pre-flight."""
    from tunesmith.errors import ConfigError
    from tunesmith.train.launch import deepspeed_stage

    with pytest.raises(ConfigError, match="deepspeed: /nonexist.json is neither a preset"):
        deepspeed_stage("/nonexist.json")
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    assert deepspeed_stage(str(tmp_path / "ds.json")) == 3 and deepspeed_stage("zero2") == 2
