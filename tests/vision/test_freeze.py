"""--freeze-vision-tower / --freeze-aligner and LoRA targets on a VLM, as a user sets them: by default LoRA adapts the
language model only; unfrozen, the tower and aligner get adapters too; full fine-tuning trains what is not frozen."""

from __future__ import annotations

import pytest

from tunesmith.config import SFTConfig
from tunesmith.train.preflight import load_template
from tunesmith.train.vision import VisionRun


def trainable(folder, tmp_path, **flags):
    cfg = SFTConfig(model=str(folder), dataset=["unused.jsonl"], output_dir=str(tmp_path / "run"), **flags)
    template, base = load_template(cfg)
    vlm = VisionRun.start(cfg, template, base)
    model, _, _ = vlm.load_trainable(cfg, base)
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family, tower, aligner, language", [
    ("qwen2-vl", "visual.blocks.", "visual.merger.", "language_model."),
    ("llava", "vision_tower.", "multi_modal_projector.", "language_model."),
])
def test_freeze_flags_and_lora_targets(family, tower, aligner, language, tiny_vlms, tmp_path):
    folder = tiny_vlms(family)
    lora = trainable(folder, tmp_path)
    assert lora and all("lora_" in n and language in n for n in lora)  # the language model's adapters only
    opened = trainable(folder, tmp_path, freeze_vision_tower=False, freeze_aligner=False)
    assert any(tower in n for n in opened) and any(aligner in n for n in opened)
    assert all("lora_" in n for n in opened)  # still adapters: the base weights stay frozen

    full = trainable(folder, tmp_path, tuner="full")
    assert not any(tower in n for n in full)  # tower frozen by default
    assert any(aligner in n for n in full) and any(language in n for n in full)
    frozen = trainable(folder, tmp_path, tuner="full", freeze_aligner=True)
    assert not any(aligner in n for n in frozen) and any(language in n for n in frozen)
