"""train/preflight.py: the checks every training command passes before its weights load, and what it prints."""

import logging

import pytest

from tunesmith.config import SFTConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError, DataError, HardwareError
from tunesmith.plan.hardware import Hardware
from tunesmith.train import preflight as pf


def machine(monkeypatch, ram_gib: float) -> None:
    monkeypatch.setattr(pf.hardware, "probe", lambda *a: Hardware(ram_gib=ram_gib, ram_free_gib=ram_gib))


def test_the_memory_plan_warns_and_refuses_with_strict_memory(tiny, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    machine(monkeypatch, 64.0)
    plan = pf.preflight(SFTConfig(model=str(tiny), dataset=["x"], device="cpu"), tiny, rows=10)
    assert 3 < plan.needed_gib < 8 and plan.have_gib == 64.0  # CPU: peak RSS, TRL's fp32 loss tiles included
    assert plan.choices == {"packing": False, "gradient_checkpointing": False, "checkpoint_every": None}
    assert "effective batch 4 = 4 per step x 1 accumulation x 1 data-parallel process(es), single process" in caplog.text
    assert "memory plan: about" in caplog.text

    machine(monkeypatch, 0.001)  # 1 MiB: nothing fits
    pf.preflight(SFTConfig(model=str(tiny), dataset=["x"], device="cpu"), tiny, rows=10)
    assert "Starting anyway; pass --strict-memory to refuse" in caplog.text
    with pytest.raises(HardwareError, match="Refusing to start"):
        pf.preflight(SFTConfig(model=str(tiny), dataset=["x"], device="cpu", strict_memory=True), tiny, rows=10)
    with pytest.raises(DataError, match="no rows left to train on"):
        pf.preflight(SFTConfig(model=str(tiny), dataset=["x"], device="cpu"), tiny, rows=0)


def test_each_method_plans_what_it_adds(tiny, monkeypatch):
    """Pairs run two sequences per row; full-weight DPO keeps a reference copy; GRPO holds the rollouts' KV cache."""
    machine(monkeypatch, 64.0)

    def needed(**fields):
        cfg = RLHFConfig(model=str(tiny), dataset=["x"], device="cpu", **fields)
        return pf.preflight(cfg, tiny, rows=10).needed_gib

    sft = pf.preflight(SFTConfig(model=str(tiny), dataset=["x"], device="cpu", learning_rate=5e-5), tiny, rows=10)
    dpo_lora, dpo_full = needed(method="dpo"), needed(method="dpo", tuner="full")
    assert dpo_lora > sft.needed_gib  # chosen and rejected: twice the activations
    assert dpo_full > needed(method="orpo", tuner="full")  # orpo has no reference model
    grpo = needed(method="grpo", max_length=2048, grpo={"num_generations": 8})
    assert grpo > needed(method="grpo", max_length=256, grpo={"num_generations": 8})  # longer rollouts, more KV


def test_an_adapter_run_in_which_base_weights_would_train_is_refused(tiny):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.models.load import lora_config

    cfg = SFTConfig(dataset=["x"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), lora_config(cfg.lora, "lora"))
    counts = pf.trainable_report(cfg, model)
    assert 0 < counts["trainable_params"] < counts["frozen_params"]
    model.base_model.model.model.norm.weight.requires_grad_(True)  # e.g. a hook or a preparation step gone wrong
    with pytest.raises(ConfigError, match=r"tuner: lora would also train 1 base weight\(s\) \(.*norm.weight\)"):
        pf.trainable_report(cfg, model)
    full = SFTConfig(dataset=["x"], tuner="full")
    assert pf.trainable_report(full, AutoModelForCausalLM.from_pretrained(tiny))["frozen_params"] == 0


def test_cpu_offload_beyond_the_machines_ram_is_said_before_the_kernel_kills_the_run(monkeypatch):
    import torch

    from tunesmith.plan.hardware import GPU

    monkeypatch.setattr(pf.models, "pick_device", lambda preference="auto": "cuda")
    monkeypatch.setattr(pf.models, "pick_dtype", lambda preference, device: torch.bfloat16)
    monkeypatch.setattr(pf.hardware, "probe", lambda *a: Hardware(gpus=[GPU(0, "H200", 139.0, 139.0, True)],
                                                                   ram_gib=64.0, ram_free_gib=60.0))
    cfg = SFTConfig(model="qwen2.5-7b-instruct", dataset=["x"], tuner="full", deepspeed="zero3-offload",
                    max_length=2048, batch_size=1, strict_memory=True)
    with pytest.raises(HardwareError, match=r"CPU offload keeps about \d+ GiB in this machine's RAM but 60 GiB is free"):
        pf.preflight(cfg, "qwen2.5-7b-instruct", rows=10)


def test_unpacked_short_data_is_planned_at_its_longest_sample_not_at_max_length(tiny, monkeypatch):
    # a first run on a handful of short rows must not warn that it needs max_length-sized batches' memory
    machine(monkeypatch, 64.0)
    cfg = dict(model=str(tiny), dataset=["x"], device="cpu", max_length=2048)
    at_max = pf.preflight(SFTConfig(**cfg), tiny, rows=4).needed_gib
    short = pf.preflight(SFTConfig(**cfg), tiny, rows=4, longest=40).needed_gib
    assert short < at_max / 4
    assert pf.preflight(SFTConfig(**cfg), tiny, rows=4, longest=4096).needed_gib == at_max  # never above max_length
    packed = pf.preflight(SFTConfig(**cfg, packing=True), tiny, rows=4, longest=40).needed_gib
    assert packed == pf.preflight(SFTConfig(**cfg, packing=True), tiny, rows=4).needed_gib  # packed rows fill it
