"""Recommendations, the `plan` entry point (table and JSON), its config, and the hardware probe."""

import json

import pytest

from tunesmith.config import load
from tunesmith.config.plan import PlanConfig
from tunesmith.errors import ConfigError
from tunesmith.plan.estimate import Setup
from tunesmith.plan.hardware import GPU, Hardware, probe
from tunesmith.plan.model_shape import builtin_config, shape_from_config
from tunesmith.plan.recommend import micro_batches, recommend
from tunesmith.plan.run import plan

Q7 = shape_from_config(builtin_config("qwen2.5-7b-instruct"))
Q05 = shape_from_config(builtin_config("qwen2.5-0.5b-instruct"))


def pick(shape, memory, **kw):
    args = dict(target_batch=4, max_micro=4) | kw
    return recommend(shape, Setup(seq=2048), memory, **args)


def test_24_gib_and_7b_picks_lora_with_checkpointing():
    choice = pick(Q7, 24)
    assert choice.fits and choice.setup.method == "lora" and choice.setup.checkpointing
    assert choice.setup.micro_batch * choice.grad_accum >= 4


def test_12_gib_and_7b_picks_qlora():
    choice = pick(Q7, 12)
    assert choice.fits and choice.setup.method == "qlora" and choice.setup.checkpointing
    assert any(t.startswith("lora + checkpointing") for t in choice.tried)  # lora was tried first


def test_8_gib_says_a_7b_full_fine_tune_does_not_fit():
    choice = pick(Q7, 8, methods=["full"])
    assert not choice.fits
    assert choice.message.startswith("nothing fits in 8.0 GiB") and "full" in choice.message
    assert "--tuner qlora" in choice.message  # names a fix
    assert not pick(Q7, 8).fits  # not even QLoRA: its weights alone are 7.2 GiB


def test_full_when_it_fits_comfortably_without_checkpointing():
    choice = pick(Q05, 80, target_batch=16, max_micro=8)
    assert (choice.setup.method, choice.setup.checkpointing, choice.setup.micro_batch, choice.grad_accum) == (
        "full", False, 8, 2)
    assert pick(Q7, 80).setup.method == "lora"  # 7B full needs ~10 bytes/param for the step alone


def test_global_batch_sets_accumulation_over_devices():
    choice = recommend(Q7, Setup(seq=2048, world_size=4), 24, target_batch=64, max_micro=4)
    assert choice.setup.micro_batch * choice.grad_accum * 4 == 64
    assert micro_batches(6, 64) == [6, 4, 2, 1] and micro_batches(8, 2) == [2, 1]


def test_zero_asked_turns_on_offload_only_when_needed():
    tight = recommend(Q7, Setup(seq=2048, zero_stage=3, world_size=2), 24, target_batch=2, max_micro=1,
                      methods=["full"], checkpointing=True)
    assert tight.fits and tight.setup.offload and tight.estimate.host_bytes > 0
    roomy = recommend(Q7, Setup(seq=2048, zero_stage=3, world_size=8), 80, target_batch=8, max_micro=1,
                      methods=["full"], checkpointing=True)
    assert roomy.fits and not roomy.setup.offload


# -----------------------------------------------------------------------------
# plan(): config -> probe -> estimate -> recommend -> print -> dict

H100 = Hardware(gpus=[GPU(0, "NVIDIA H100 80GB HBM3", 79.1, 78.6, True, "9.0")], cpu_cores=16, ram_gib=128,
                ram_free_gib=120, disk_free_gib=50)


@pytest.fixture
def q7_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(builtin_config("qwen2.5-7b-instruct")))
    return str(tmp_path)


def test_plan_prints_a_table_and_returns_the_plan(q7_folder, capsys):
    result = plan(load(PlanConfig, [q7_folder, "--gpu-memory", "24"]), hardware=H100)
    out = capsys.readouterr().out
    assert result["fits"] and result["recommended"]["settings"]["method"] == "lora"
    assert result["recommended"]["settings"]["gradient_checkpointing"] is True
    assert "peak memory per device" in out and "optimizer states" in out and "fits" in out
    assert result["command"].startswith(f"tunesmith sft --model {q7_folder} --tuner lora")


def test_plan_json_and_explicit_settings(q7_folder, capsys):
    cfg = load(PlanConfig, [q7_folder, "--method", "full", "--no-gradient-checkpointing", "--batch-size", "1",
                            "--json"])
    result = plan(cfg, hardware=H100)
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert result["asked"]["fits"] is False and not result["fits"]
    assert result["message"].startswith("your settings need") and "do not fit in 78.6 GiB" in result["message"]


def test_plan_inference_kv_cache(q7_folder, capsys):
    result = plan(PlanConfig(model=q7_folder, inference=True, context=32768, batch_size=1, gpu_memory=24), hardware=H100)
    kv = result["recommended"]["estimate"]["breakdown_gib"]["kv_cache"]
    assert kv == pytest.approx(2 * 28 * 4 * 128 * 32768 * 2 / 2**30, abs=0.01)
    assert result["fits"] and "KV cache" in result["message"]


def test_plan_config_checks():
    with pytest.raises(ConfigError, match="offload: CPU offload needs sharding"):
        load(PlanConfig, ["--offload"])
    with pytest.raises(ConfigError, match="fsdp: choose FSDP or DeepSpeed ZeRO"):
        load(PlanConfig, ["--fsdp", "--zero-stage", "3"])
    cfg = load(PlanConfig, ["m/x", "--max_seq_length", "4096", "--gradient-checkpointing", "auto", "--lora-targets",
                            "q_proj", "v_proj"])
    assert (cfg.model, cfg.max_length, cfg.gradient_checkpointing, cfg.lora_targets) == (
        "m/x", 4096, "auto", ["q_proj", "v_proj"])
    assert all(f.description for f in PlanConfig.model_fields.values())


def test_unknown_lora_target_is_a_config_error(q7_folder):
    with pytest.raises(ConfigError, match="lora.targets: no module qkv_proj in a qwen2 layer; its linear modules are "
                                          "q_proj, k_proj"):
        plan(PlanConfig(model=q7_folder, lora_targets=["qkv_proj"]), hardware=H100)


def test_probe_never_fails_and_reads_this_machine(monkeypatch):
    hw = probe()
    assert hw.cpu_cores >= 1 and hw.ram_gib > 0 and hw.disk_free_gib > 0
    assert hw.device in ("cuda", "mps", "cpu") and hw.memory_gib() > 0
    json.dumps(hw.as_dict())
    import tunesmith.plan.hardware as hardware

    def broken(_hw):
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(hardware, "_accelerators", broken)
    hw = hardware.probe()
    assert hw.ram_gib > 0 and any("driver exploded" in p for p in hw.problems)


def test_cli_row_parses_flags_prints_help_and_json(q7_folder, monkeypatch, capsys):
    """The COMMANDS row the lead adds to cli/main.py (set here too, so this runs before and after it lands)."""
    import tunesmith.plan.hardware as hardware
    from tunesmith.cli import main as cli

    monkeypatch.setattr(hardware, "probe", lambda path=".": H100)
    monkeypatch.setattr("tunesmith.plan.run.probe", lambda path=".": H100)
    monkeypatch.setitem(cli.COMMANDS, "plan", (PlanConfig, plan, "memory plan: will it fit, and with which settings"))
    assert cli.main(["plan", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--gpu-memory" in help_text and "--gradient-checkpointing" in help_text and "--json" in help_text
    assert cli.main(["plan", q7_folder, "--gpu-memory", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recommended"]["settings"]["method"] == "qlora" and result["fits"]
    assert cli.main(["plan", q7_folder, "--gpu-mem", "12"]) == 2
    assert "did you mean --gpu-memory" in capsys.readouterr().err
