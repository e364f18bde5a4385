"""Training ids for VLMs, per family (tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA, LLaVA-OneVision, Gemma 3,
Idefics3, InternVL): no vision token ever has a label, the trained tokens are exactly the answers, the served prompt
is a prefix of the training ids; a padded batch, and a packed row (several samples with their images, positions
restarting per sample, the Qwen-VL 3-D M-RoPE positions per sample), give each sample the logits it gets alone.
Gemma 3 refuses packing (its image attention is bidirectional), and the test shows why: packed, its logits differ."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tunesmith.errors import ConfigError
from tunesmith.models.vision import BY_MODEL_TYPE, load_vision_model, template_of
from tunesmith.models.vision import FAMILIES as REGISTRY
from tunesmith.templates import IGNORE
from tunesmith.train.vision import M_ROPE, VisionCollator, VisionRun, rope_index_of

BY_FAMILY = {f.name: f for f in REGISTRY}
FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "llava", "llava-onevision", "gemma3", "idefics3", "internvl"]


def conversation(pictures) -> tuple[list[dict], list[str]]:
    img = {"type": "image"}
    return [
        {"role": "user", "content": [img, {"type": "text", "text": "What colour is this?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [{"type": "text", "text": "And these two?"}, img, img]},
        {"role": "assistant", "content": "Green, then blue."},
    ], [str(p) for p in pictures]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tiny_vlms):
    model, processor = load_vision_model(tiny_vlms(request.param), torch.float32)
    return request.param, model, template_of(processor)


def test_no_vision_token_is_trained(vlm, pictures):
    family, _, template = vlm
    messages, refs = conversation(pictures)
    images = [Image.open(r) for r in refs]
    for loss_on, answers in (("assistant", ["Red.", "Green, then blue."]), ("last", ["Green, then blue."])):
        ids, labels = template.render_images(messages, images, loss_on=loss_on)
        assert len(ids) == len(labels)
        vision_positions = [i for i, t in enumerate(ids) if t in template.vision_token_ids]
        image_tokens = ids.count(template.processor.image_token_id)
        expected = template.image_inputs(images)["num_image_tokens"]
        assert image_tokens == expected >= 3, family  # the processor's own expansion of all three pictures
        assert template.tokenizer.decode(ids).count(template.placeholder) >= 3
        assert vision_positions and all(labels[i] == IGNORE for i in vision_positions)
        trained = [t for t in labels if t != IGNORE]
        text = template.tokenizer.decode(trained)
        end = template.end_of_turn.strip()
        assert text.endswith(end) and text.count(end) == len(answers), (family, loss_on, text)
        # the answers alone (SmolVLM's template puts the space after "Assistant:" in the answer: it is the model's)
        assert [piece.strip() for piece in text.split(end)[:-1]] == answers, (family, loss_on, text)
    # serving parity: the prompt for the second answer (what encode_vision_prompt gives deploy) is a token prefix of
    # the training ids, images and all
    prompt = template.render_prompt_images(messages[:3], images)
    assert ids[: len(prompt)] == prompt, family


def features(template, pictures):
    messages, refs = conversation(pictures)
    samples = [(messages, refs), (messages[:2], refs[:1]),
               ([{"role": "user", "content": "No picture here."}, {"role": "assistant", "content": "Fine."}], [])]
    out = []
    for msgs, rs in samples:
        ids, labels = template.render_images(msgs, [Image.open(r) for r in rs])
        out.append({"input_ids": ids, "labels": labels, "image_refs": rs})
    return out


def test_batched_and_packed_logits_equal_each_sample_alone(vlm, pictures):
    family, model, template = vlm
    feats = features(template, pictures)
    with torch.no_grad():
        alone = [model(**_inputs(VisionCollator(template, packing=False)([f])), use_cache=False).logits[0]
                 for f in feats]
        padded = VisionCollator(template, packing=False)(feats)
        batched = model(**_inputs(padded), use_cache=False).logits
        rope = rope_index_of(model) if family in M_ROPE else None
        packed = VisionCollator(template, packing=True, rope_index=rope)(feats)
        together = model(**_inputs(packed)).logits
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    start, packed_diff = 0, 0.0
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        torch.testing.assert_close(batched[i, :n], alone[i], atol=1e-4, rtol=1e-4)
        packed_diff = max(packed_diff, (together[0, start: start + n] - alone[i]).abs().max().item())
        # labels: the sample's own, its first position never trained (it would be predicted from the sample before)
        assert packed["labels"][0, start].item() == IGNORE
        assert packed["labels"][0, start + 1: start + n].tolist() == padded["labels"][i, 1:n].tolist()
        start += n
    if BY_FAMILY[family].packing is None:
        assert packed_diff < 1e-4, (family, packed_diff)
    else:  # refused for this family: and indeed not exact
        assert packed_diff > 1e-2, (family, packed_diff)
    if family in M_ROPE:  # the 3-D positions of the second sample restart at 0, as the model computes them alone
        assert packed["position_ids"].shape[0] == 4
        assert packed["position_ids"][:, 0, len(feats[0]["input_ids"])].tolist() == [0, 0, 0, 0]


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def test_packing_refused_where_not_exact():
    class Cfg:
        truncation, packing, tuner = "error", True, "lora"

    with pytest.raises(ConfigError, match="packing: refused for gemma3: Gemma 3 attends bidirectionally"):
        VisionRun(None, BY_MODEL_TYPE["gemma3"], True, True).check(Cfg())
