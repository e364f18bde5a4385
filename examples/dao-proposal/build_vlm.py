"""A small LLaVA-layout vision-language model for the chart step on a CPU: a pretrained LM with an untrained eye.

    python examples/dao-proposal/build_vlm.py                   # -> runs/dao-vlm-base (a plain transformers folder)
    tunesmith sft --model runs/dao-vlm-base ...                 # README, "Chart step on a CPU"

No pretrained VLM can be downloaded here, so this one is assembled:
  language model  the embedded SmolLM2-135M-Instruct (pretrained), its vocabulary plus one <image> token
  vision tower    a CLIP-ViT built from a small config, randomly initialised: 64x64 pixels in one 64x64 patch -> one
                  image token per chart (--patch 16: 16 tokens), 4 layers, hidden 192 (3.5M parameters)
  projector       LLaVA's 2-layer MLP from the tower to the LM's hidden size, randomly initialised (0.4M)
Until it is trained, the model cannot see: the picture reaches the LM as noise. Training the tower and the projector
(--freeze-vision-tower false --freeze-aligner false, at their own --vision-lr / --aligner-lr) is what teaches it to
read the charts; with one token per chart the language model has a single place to read the trend from (with 16, the
trend is spread over the patches, and none of the README's runs learned to read it). The processor squeezes
each picture to 64x64 (no crop: a chart's first and last days are at its edges) and the chat template is SmolLM2's
ChatML with <image> where a picture goes. Seeded: the same folder every run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SEED = 20251204
PIXELS = 64  # the tower's input side; 64 / PATCH squared image tokens per picture
PATCH = 64  # one image token: what the README's runs read the trend from (16: 16 tokens, which they did not)
TOWER = {"model_type": "clip_vision_model", "hidden_size": 192, "intermediate_size": 384, "num_hidden_layers": 4,
         "num_attention_heads": 4, "image_size": PIXELS, "patch_size": PATCH, "projection_dim": 192}
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # SmolLM2-Instruct's default
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build(out: Path, seed: int = SEED, lm_folder: Path | None = None, patch: int = PATCH) -> Path:
    """Write the model, tokenizer, processor and chat template to `out`; `lm_folder`: another causal LM with
    SmolLM2's tokenizer (the tests use a tiny random one), else the embedded SmolLM2-135M-Instruct; `patch`: the
    tower's patch side (PIXELS / patch squared image tokens per picture)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )

    from tunesmith.models.embedded import prepared_folder

    lm_folder = lm_folder or prepared_folder()  # SmolLM2-135M-Instruct, converted from the packaged GGUF once, cached
    tok = AutoTokenizer.from_pretrained(lm_folder)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = TEMPLATE
    lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=torch.float32)
    torch.manual_seed(seed)
    lm.resize_token_embeddings(len(tok), mean_resizing=True)  # the <image> row; its embedding is never read

    text = lm.config.to_dict()
    config = LlavaConfig(text_config=text, vision_config={**TOWER, "patch_size": patch}, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    torch.manual_seed(seed)  # the tower and the projector: random, the same every run
    model = LlavaForConditionalGeneration(config)
    missing = model.model.language_model.load_state_dict(lm.model.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tied, as in SmolLM2
    model.generation_config = lm.generation_config

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(TEMPLATE)
    LlavaImageProcessorPil(size={"height": PIXELS, "width": PIXELS}, do_center_crop=False,
                           crop_size={"height": PIXELS, "width": PIXELS}).save_pretrained(out)
    # what LlavaProcessor reads to count image tokens: (PIXELS / PATCH)^2 patches, CLIP's CLS feature dropped
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaProcessor", "patch_size": patch, "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dao-vlm-base"), help="folder to write")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the random tower and projector")
    parser.add_argument("--lm", type=Path, help="a causal LM folder with SmolLM2's tokenizer (default: the embedded one)")
    parser.add_argument("--patch", type=int, default=PATCH, choices=(8, 16, 32, 64),
                        help="the tower's patch side in pixels: (64 / patch)^2 image tokens per chart (64: one)")
    args = parser.parse_args()
    print(f"wrote {build(args.out, args.seed, args.lm, args.patch)}")


if __name__ == "__main__":
    main()
