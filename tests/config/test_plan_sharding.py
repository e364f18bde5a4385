"""`tunesmith plan` reads the sharding a training file names as sft reads it: a DeepSpeed JSON's ZeRO stage and
offload, and fsdp_offload, so the plan is the memory that run will need (they were left aside: planned unsharded)."""

import json

import pytest

from tunesmith.config import PlanConfig, load
from tunesmith.errors import ConfigError
from tunesmith.plan.run import plan


def test_a_deepspeed_json_plans_as_its_preset(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
                              "train_micro_batch_size_per_gpu": "auto"}))
    args = ["qwen2.5-0.5b-instruct", "--tuner", "full", "--nproc-per-node", "4", "--gpu-memory", "80"]
    from_json = load(PlanConfig, [*args, "--deepspeed", str(ds)])
    preset = load(PlanConfig, [*args, "--deepspeed", "zero3-offload"])
    assert (from_json.zero_stage, from_json.offload) == (3, True)
    def planned(cfg):
        chosen = plan(cfg)["recommended"]
        return chosen["settings"]["zero_stage"], chosen["settings"]["offload"], chosen["estimate"]["total_gib"]

    assert planned(from_json) == planned(preset) == (3, True, planned(preset)[2])
    assert planned(preset)[2] < planned(load(PlanConfig, args))[2]  # sharded and offloaded: less per GPU


def test_a_missing_deepspeed_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="deepspeed: .*nope.json is neither a preset"):
        load(PlanConfig, ["--deepspeed", str(tmp_path / "nope.json")])


def test_fsdp_offload_of_a_training_file_is_plans_offload(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: qwen2.5-7b-instruct\ntuner: full\nfsdp: full-shard\nfsdp_offload: true\nnproc_per_node: 4\n")
    cfg = load(PlanConfig, ["-c", str(path)])
    assert cfg.fsdp and cfg.offload
