"""`gradient_checkpointing: offload` (train/offload.py): checkpointed layers' inputs wait in pinned host memory. The
config, the memory plan and the hooks' wiring are checked here on CPU; the copies themselves on a GPU (marked)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tunesmith.config import SFTConfig
from tunesmith.plan import speed as plan_speed
from tunesmith.plan.estimate import Setup, estimate_training
from tunesmith.plan.hardware import GPU, Hardware
from tunesmith.plan.model_shape import load_shape
from tunesmith.train import offload, preflight, speed

from tests.train.test_fast_path import tiny_qwen

GIB = 1024**3
L8 = dict(method="qlora", seq=2048, micro_batch=2, lora_rank=32, packing=True, attn="flash")  # Unsloth's setting


def test_offload_is_a_checkpointing_choice_refused_beside_sharding_engines():
    cfg = SFTConfig(dataset=["x"], gradient_checkpointing="offload")
    assert speed.speed_args(cfg, "cuda")["activation_checkpointing"] is True
    with pytest.raises(ValidationError, match="zero3-offload"):
        SFTConfig(dataset=["x"], gradient_checkpointing="offload", deepspeed="zero2")
    with pytest.raises(ValidationError, match="gradient_checkpointing"):
        SFTConfig(dataset=["x"], gradient_checkpointing="sometimes")


def test_the_plan_moves_the_layer_inputs_from_the_gpu_to_host_memory():
    shape = load_shape("llama-3.1-8b-instruct")
    plain = estimate_training(shape, Setup(**L8, checkpointing=True))
    moved = estimate_training(shape, Setup(**L8, checkpointing=True, activation_offload=True))
    inputs = shape.layers * 2 * shape.hidden * 2 * 2048  # bf16, 4,096 tokens per micro-batch
    assert moved.host_bytes == inputs and plain.host_bytes == 0
    assert plain.total - moved.total == pytest.approx(inputs * (shape.layers - 2) / shape.layers, rel=0.2)
    between = (plain.total + moved.total) / 2
    assert plan_speed.offload_fits(shape, Setup(**L8), between)
    assert not plan_speed.offload_fits(shape, Setup(**L8), plain.total * 1.01)  # plain checkpointing fits: no need
    assert not plan_speed.offload_fits(shape, Setup(**L8, zero_stage=3), between)  # ZeRO offloads its own way


def test_sft_offloads_on_its_own_only_where_nothing_else_fits(monkeypatch):
    """A GPU (mocked) with room for the offloaded run but not for plain checkpointing: unset, sft chooses offload."""
    import tunesmith.models.load as models
    import tunesmith.plan.hardware as hardware

    shape = load_shape("llama-3.1-8b-instruct")
    cfg = SFTConfig(dataset=["x"], model="llama-3.1-8b-instruct", tuner="qlora", max_length=2048, batch_size=2,
                    lora={"rank": 32}, packing=True)
    monkeypatch.setattr(models, "pick_device", lambda preference="auto": "cuda")
    monkeypatch.setattr(models, "pick_dtype", lambda preference, device: torch.bfloat16)
    monkeypatch.setattr(speed, "varlen_runs", lambda device, dtype: True)
    plan = preflight.Preflight("cuda", torch.bfloat16, Hardware(gpus=[GPU(0, "small", 80.0, 80.0, True)]))
    setup = preflight.method_setup(preflight._setup(cfg, plan, shape), preflight._alignment(cfg))
    plain = estimate_training(shape, setup.__class__(**{**setup.__dict__, "checkpointing": True})).total
    moved = estimate_training(shape, setup.__class__(**{**setup.__dict__, "checkpointing": True,
                                                        "activation_offload": True})).total
    for memory_gib, chosen in (((plain + moved) / 2 / plan_speed.AUTO_SHARE / GIB, "offload"),
                               (plain * 1.02 / plan_speed.AUTO_SHARE / GIB, True)):
        monkeypatch.setattr(hardware, "probe", lambda *a, m=memory_gib: Hardware(gpus=[GPU(0, "small", m, m, True)]))
        asked = cfg.model_copy(update={"gradient_checkpointing": None, "checkpoint_every": None})
        preflight.resolve_speed(asked)
        assert asked.gradient_checkpointing == chosen


def test_plan_prints_the_offloaded_command(capsys):
    from tunesmith.config.plan import PlanConfig
    from tunesmith.plan.run import plan

    result = plan(PlanConfig(model="llama-3.1-8b-instruct", gpu_memory=80, tuner="qlora", max_length=2048,
                             batch_size=2, gradient_checkpointing="offload", json=True))
    assert result["command"].count("--gradient-checkpointing offload") == 1
    assert any("pinned CPU RAM" in note for note in result["notes"])


def test_the_plan_offloads_last_and_hands_the_choice_on():
    """Without a checkpointing choice, plan tries offload only after plain checkpointing at every micro-batch, and its
    settings (which the wizard turns into flags) say offload."""
    from tunesmith.plan.recommend import FIT, recommend
    from tunesmith.plan.report import settings_dict

    shape = load_shape("llama-3.1-8b-instruct")
    one = Setup(**{**L8, "micro_batch": 1, "grad_accum": 2, "checkpointing": True})  # as recommend tries it
    room = (estimate_training(shape, one).total + estimate_training(shape, Setup(**{**one.__dict__,
            "activation_offload": True})).total) / 2 / FIT / GIB
    choice = recommend(shape, Setup(**L8), room, target_batch=2, max_micro=2, methods=["qlora"])
    assert choice.fits and choice.setup.micro_batch == 1 and choice.setup.activation_offload
    assert settings_dict(choice.setup)["gradient_checkpointing"] == "offload"
    roomy = recommend(shape, Setup(**L8), room * 1.5, target_batch=2, max_micro=2, methods=["qlora"])
    assert roomy.fits and not roomy.setup.activation_offload


def _layers_backward(model, offloader=None):
    """Loss and gradients of a tiny model with every layer checkpointed, optionally through the offload hooks."""
    model.train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    if offloader is not None:
        offload.offload_checkpoint_inputs(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_hooks_see_each_checkpointed_layers_input_and_nothing_else(monkeypatch):
    """What train/offload.py relies on: torch's non-reentrant checkpoint passes the layer's positional inputs (the
    hidden states; transformers binds the rest as keywords) through the hooks around it, once per layer. On CPU the
    hooks hand tensors back untouched, so training is exactly plain checkpointing."""
    seen = []
    pack = offload.ActivationOffload.pack
    monkeypatch.setattr(offload.ActivationOffload, "pack",
                        lambda self, t: (seen.append(tuple(t.shape)), pack(self, t))[1])
    reference = _layers_backward(tiny_qwen())
    loss, grads = _layers_backward(tiny_qwen(), offloader=True)
    assert seen == [(2, 48, 64)] * 2  # two layers, their hidden states
    assert loss == reference[0] and grads.keys() == reference[1].keys()
    assert all(torch.equal(grads[n], reference[1][n]) for n in grads)
    model = tiny_qwen()
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert offload.offload_checkpoint_inputs(model) >= 2  # the layers (and the model, which carries the flag too)
    assert all(layer._gradient_checkpointing_func.offloads for layer in model.model.layers)
    assert offload.offload_checkpoint_inputs(model) == 0  # wrapped once


@pytest.mark.gpu
def test_offloaded_layer_inputs_leave_the_gpu_and_come_back_exact_on_gpu():
    """On CUDA: after the forward the checkpointed inputs are in host memory (the GPU holds less by about their
    size), and the gradients are plain checkpointing's (a tensor read back before its copy arrived would not be)."""
    def run(offloader):
        model = tiny_qwen(device="cuda", hidden=512, heads=8, kv_heads=2, head_dim=64).cuda()
        model.train()
        model.activation_checkpointing_enable({"use_reentrant": False})
        if offloader:
            offload.offload_checkpoint_inputs(model)
        ids = torch.randint(0, 128, (4, 1024), generator=torch.Generator().manual_seed(0)).cuda()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids).loss
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
        loss.backward()
        torch.cuda.synchronize()
        return held, {n: p.grad for n, p in model.named_parameters()}

    plain_held, plain_grads = run(False)
    moved_held, moved_grads = run(True)
    inputs = 2 * 4 * 1024 * 512 * 4  # two layers' fp32 hidden states
    assert plain_held - moved_held >= 0.9 * inputs
    # not bit for bit: CUDA's embedding and attention backward add with atomics, in any order, run to run
    assert all(torch.allclose(moved_grads[n], plain_grads[n], rtol=1e-4, atol=1e-6) for n in plain_grads)


@pytest.mark.gpu
def test_sft_trains_with_offloaded_checkpointing_on_gpu(tmp_path):
    import datasets

    from tests.train.test_fast_path import samples, stub_tokenizer
    from tunesmith.train.setup import run_trainer

    cfg = SFTConfig(dataset=["x"], tuner="full", packing=False, gradient_checkpointing="offload", max_length=128,
                    batch_size=2, max_steps=6, logging_steps=1, learning_rate=1e-3, report_to=["none"],
                    output_dir=str(tmp_path))
    model = tiny_qwen(device="cuda").cuda()
    trainer = run_trainer(cfg, tmp_path, model, stub_tokenizer(), datasets.Dataset.from_list(samples((60,) * 12)),
                          None, "cuda", torch.float32, None, None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(getattr(m._gradient_checkpointing_func, "offloads", False) for m in model.model.layers)
    assert losses[-1] < losses[0]
