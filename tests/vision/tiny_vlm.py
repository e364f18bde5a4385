"""Tiny random-weight vision-language models built from configs (2 text layers, hidden 64; a 1-layer vision tower),
saved as hub-style folders: weights, the SmolLM2 tokenizer with the family's image tokens added, the family's chat
template and its image processor (the PIL one: no torchvision on CPU). Images stay tiny (Qwen2-VL: 1 to 4 image tokens
per picture, LLaVA: 4), so a training step takes well under a second on CPU.

    from vision.tiny_vlm import BUILDERS, make_image     # tests' pythonpath is tests/
    folder = BUILDERS["qwen2-vl"](tmp_path / "vlm")     # then tunesmith.models.vision.load_vision_model(folder)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Qwen2-VL-7B-Instruct's chat template (its chat_template.json), as the Qwen2-VL and Qwen2.5-VL folders ship it.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# A ChatML template with LLaVA's <image> placeholder (as llava-interleave-qwen renders image parts).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<image>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 32, "max_position_embeddings": 2048, "tie_word_embeddings": True}


def _tokenizer(tokens: list[str], template: str):
    from transformers import AutoTokenizer

    from tunesmith.models.embedded import prepared_folder

    # TUNESMITH_TEST_TOKENIZER: a folder with the SmolLM2 tokenizer files, for machines without the embedded model.
    tok = AutoTokenizer.from_pretrained(os.environ.get("TUNESMITH_TEST_TOKENIZER") or prepared_folder())
    tok.add_special_tokens({"additional_special_tokens": tokens})
    tok.chat_template = template
    return tok


def make_tiny_qwen2_vl(folder: Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """A Qwen2-VL (or, family="qwen2_5_vl", Qwen2.5-VL) folder. Images are resized to 28x28..56x56 pixels (1 to 4
image tokens)."""
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        Qwen2_5_VLConfig,
        Qwen2VLConfig,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tok = _tokenizer(QWEN2_VL_TOKENS, QWEN2_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2_VL_TOKENS}
    text = dict(TEXT, vocab_size=len(tok), rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if family == "qwen2_vl":
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2}
        config_cls = Qwen2VLConfig
    else:
        vision = {"depth": 1, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [0]}
        config_cls = Qwen2_5_VLConfig
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(folder)
    _with_template(folder, QWEN2_VL_TEMPLATE)
    return folder


def make_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A LLaVA folder (CLIP tower, 2-layer MLP projector, Qwen2 language model). Images become 28x28: 4 tokens."""
    import torch
    from transformers import AutoModelForImageTextToText, LlavaConfig
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )

    tok = _tokenizer(["<image>"], LLAVA_TEMPLATE)
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "projection_dim": 32}
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    # what LlavaProcessor reads to count image tokens: (28 / 14)^2 patches, the CLS feature dropped ("default")
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaProcessor", "patch_size": 14, "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1}))
    _with_template(folder, LLAVA_TEMPLATE)
    return folder


def _with_template(folder: Path, template: str) -> None:
    (folder / "chat_template.jinja").write_text(template)


def make_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (28, 28)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


BUILDERS = {
    "qwen2-vl": make_tiny_qwen2_vl,
    "qwen2.5-vl": lambda folder, seed=0: make_tiny_qwen2_vl(folder, "qwen2_5_vl", seed),
    "llava": make_tiny_llava,
}


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def write_colour_data(folder, rows: int = 24, seed: int = 0):
    """A learnable image task: pictures of one colour (sizes vary, so image token counts do), the answer names it.
    Half the rows are OpenAI content parts, half an `images` column with <image> placeholders; paths relative."""
    import json
    import random

    rng = random.Random(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        name = rng.choice(sorted(COLOURS))
        make_image(folder / "imgs" / f"{i}.png", COLOURS[name], (rng.choice([28, 42, 56]), rng.choice([28, 42, 56])))
        answer = {"role": "assistant", "content": f"It is {name}."}
        if i % 2:
            user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"imgs/{i}.png"}},
                                                {"type": "text", "text": "Which colour?"}]}
            lines.append({"messages": [user, answer]})
        else:
            lines.append({"messages": [{"role": "user", "content": "<image>Which colour?"}, answer],
                          "images": [f"imgs/{i}.png"]})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def run_tunesmith(*args, check=True, timeout=600):
    """The console script, one compute thread (the tiny models' matmuls are microseconds)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([exe, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc
