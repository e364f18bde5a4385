"""The VLM renderer: the prompt encode_vision_prompt gives the server is a token-for-token prefix of what training
encodes for the same turns, with the processor's own image tokens and pixels; the model answers it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tunesmith.models.vision import (
    encode_vision_prompt,
    is_vision_model,
    load_vision_model,
    template_of,
)
from tunesmith.templates import IGNORE

FAMILIES = ["qwen2-vl", "llava"]  # Qwen2.5-VL and the others: test_masks_packing.py


def chat(answer: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ignored"}},
                                         {"type": "text", "text": "Which colour is this?"}]}]
    return msgs + ([{"role": "assistant", "content": answer}] if answer else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_is_prefix_of_training_ids_and_generates(family, tiny_vlms, pictures):
    folder = tiny_vlms(family)
    assert is_vision_model(folder) and not is_vision_model({"model_type": "llama"})
    model, processor = load_vision_model(folder, torch.float32)
    image = Image.open(pictures[0])
    inputs = encode_vision_prompt(processor, chat(), [image])
    ids = inputs["input_ids"][0].tolist()
    assert inputs["input_ids"].shape[0] == 1 and inputs["attention_mask"].shape == inputs["input_ids"].shape
    expected = processor(text=[processor.image_token], images=[image], return_tensors="pt")
    for key in set(expected) - {"input_ids", "attention_mask", "mm_token_type_ids"}:  # pixels as the processor computes
        assert torch.equal(inputs[key], expected[key]), key
    image_tokens = int((expected["input_ids"] == processor.image_token_id).sum())
    assert ids.count(processor.image_token_id) == image_tokens > 0
    if processor.return_mm_token_type_ids:  # Qwen2-VL's M-RoPE reads which tokens are the image's
        assert inputs["mm_token_type_ids"][0].tolist().count(1) == image_tokens

    train_ids, labels = template_of(processor).render_images(chat("It is red."), [image])
    assert train_ids[: len(ids)] == ids
    trained = processor.tokenizer.decode([t for t, lab in zip(train_ids, labels) if lab != IGNORE])
    assert trained.startswith("It is red.") and "Which" not in trained

    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == len(ids) + 4
    with pytest.raises(Exception, match="image part"):
        encode_vision_prompt(processor, chat(), [image, image])
