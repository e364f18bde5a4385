"""--vision-lr / --aligner-lr (ms-swift's vit_lr / aligner_lr): the optimizer holds one learning rate per part of a
VLM, a short run moves the tower's weights by as much more as its rate is higher, and the keys are refused where they
would set nothing (a text model, a frozen part, an optimizer tunesmith does not build)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tunesmith.config import SFTConfig, help_text
from tunesmith.errors import ConfigError
from tunesmith.train import tuners
from tunesmith.train.preflight import load_template
from tunesmith.train.vision import VisionRun


def _optimizer(folder, tmp_path, **flags):
    cfg = SFTConfig(model=str(folder), dataset=["unused.jsonl"], output_dir=str(tmp_path / "run"), **flags)
    template, base = load_template(cfg)
    vlm = VisionRun.start(cfg, template, base)
    model, device, _ = vlm.load_trainable(cfg, base)
    return model, tuners.build_optimizer(cfg, model, device)


def _rates(model, optimizer):
    """part -> the learning rates its trainable parameters sit at in the optimizer."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    where = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    parts = {"vision_tower.": "tower", "multi_modal_projector.": "aligner", "language_model.": "language"}
    out: dict[str, set] = {}
    for name, param in base.named_parameters():
        if param.requires_grad:
            part = next(v for k, v in parts.items() if k in name or (k == "language_model." and "lm_head" in name))
            out.setdefault(part, set()).add(where[id(param)])
    return out


@pytest.mark.parametrize("tuner", ["lora", "full"])
def test_the_optimizer_holds_each_parts_rate(tuner, tiny_vlms, tmp_path):
    model, optimizer = _optimizer(tiny_vlms("llava"), tmp_path, tuner=tuner, freeze_vision_tower=False,
                                  freeze_aligner=False, learning_rate=2e-4, vision_lr=1e-3, aligner_lr=5e-4)
    assert _rates(model, optimizer) == {"language": {2e-4}, "tower": {1e-3}, "aligner": {5e-4}}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(p.requires_grad for p in model.parameters())
    assert optimizer.param_groups[0]["lr"] == 2e-4  # the rate the Trainer logs is the language model's


def test_a_higher_vision_lr_moves_the_tower_more(tiny_vlms, colour_data, tmp_path):
    from tunesmith import api

    folder = tiny_vlms("llava")
    base = load_file(folder / "model.safetensors")

    def moved(vision_lr):
        cfg = SFTConfig(model=str(folder), dataset=[str(colour_data)], output_dir=str(tmp_path / f"run{vision_lr}"),
                        tuner="full", freeze_vision_tower=False, vision_lr=vision_lr, learning_rate=1e-4,
                        max_steps=2, batch_size=4, warmup_ratio=0, lr_scheduler="constant", report_to=["none"],
                        seed=0, logging_steps=1)
        tuned = load_file(api.sft(cfg).final_dir / "model.safetensors")
        change = {}
        for part in ("vision_tower", "language_model"):
            names = [n for n in base if part in n and base[n].ndim >= 2]
            change[part] = sum((tuned[n].float() - base[n].float()).abs().mean().item() for n in names) / len(names)
        return change

    slow, fast = moved(1e-4), moved(1e-2)
    assert fast["vision_tower"] > 20 * slow["vision_tower"]  # Adam's step scales with the rate: ~100x
    assert fast["language_model"] < 3 * slow["language_model"]  # the language model kept its rate


def test_refused_where_nothing_would_take_the_rate(tiny_vlms, tmp_path):
    with pytest.raises(ValueError, match="vision_lr: the vision tower is frozen"):
        SFTConfig(dataset=["d.jsonl"], vision_lr=1e-3)
    with pytest.raises(ValueError, match="aligner_lr: the aligner is frozen .the default for tuner lora"):
        SFTConfig(dataset=["d.jsonl"], aligner_lr=1e-3, freeze_vision_tower=False)
    with pytest.raises(ValueError, match="aligner_lr: the aligner is frozen .freeze_aligner is true"):
        SFTConfig(dataset=["d.jsonl"], tuner="full", aligner_lr=1e-3, freeze_aligner=True)
    with pytest.raises(ValueError, match="LoRA\\+"):
        SFTConfig(dataset=["d.jsonl"], vision_lr=1e-3, freeze_vision_tower=False, lora={"plus_ratio": 16})
    SFTConfig(dataset=["d.jsonl"], tuner="full", aligner_lr=1e-3)  # full trains the aligner by default

    from tiny import make_tiny_model

    text = make_tiny_model(tmp_path / "text")
    cfg = SFTConfig(model=str(text), dataset=["d.jsonl"], vision_lr=1e-3, freeze_vision_tower=False)
    template, base = load_template(cfg)
    with pytest.raises(ConfigError, match="vision_lr: .* is a text model"):
        VisionRun.start(cfg, template, base)

    help = help_text(SFTConfig, "tunesmith sft")
    assert "--vision-lr" in help and "--aligner-lr" in help and "vit_lr" in help
