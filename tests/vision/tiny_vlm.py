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


# Gemma 3's chat template, trimmed to what training renders (no system-in-first-turn handling).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else "
    "message['role'] %}<start_of_turn>{{ role }}\n{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>{% elif "
    "item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# SmolVLM / Idefics3's chat template (content always a list of parts, as theirs).
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}{% if message['content'][0]['type'] "
    "== 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# InternVL's HF chat template: ChatML, an image part is <IMG_CONTEXT> on its own line.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def _tokenizer_with(tokens: list[str], template: str, attributes: dict[str, str] | None = None):
    from transformers import AutoTokenizer

    from tunesmith.models.embedded import prepared_folder

    tok = AutoTokenizer.from_pretrained(os.environ.get("TUNESMITH_TEST_TOKENIZER") or prepared_folder(),
                                        extra_special_tokens=attributes or {})
    tok.add_special_tokens({"additional_special_tokens": tokens})
    tok.chat_template = template
    return tok


def _save(folder: Path, config, tok, image_processor, template: str, processor: dict | None = None, seed: int = 0):
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    if processor:
        (folder / "processor_config.json").write_text(json.dumps(processor))
    _with_template(folder, template)
    return folder


def make_tiny_gemma3(folder: Path, seed: int = 0) -> Path:
    """Gemma 3 (SigLIP tower, pooled to 4 soft tokens per 28x28 image, bidirectional attention within an image)."""
    from transformers import Gemma3Config
    from transformers.models.gemma3.image_processing_pil_gemma3 import (
        Gemma3ImageProcessorPil,
    )

    marks = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _tokenizer_with(["<start_of_turn>", "<end_of_turn>"], GEMMA3_TEMPLATE, marks)
    text = dict(TEXT, vocab_size=len(tok), sliding_window=64, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.convert_tokens_to_ids("<end_of_turn>"), pad_token_id=tok.pad_token_id)
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id, tie_word_embeddings=True)
    image_processor = Gemma3ImageProcessorPil(size={"height": 28, "width": 28})
    return _save(folder, config, tok, image_processor, GEMMA3_TEMPLATE, {"image_seq_length": 4}, seed)


def make_tiny_idefics3(folder: Path, seed: int = 0) -> Path:
    """Idefics3 (the SmolVLM layout: SigLIP-like tower, pixel-shuffle connector, Llama text model); one 56x56 tile per
    image (splitting off), 4 image tokens."""
    from transformers import Idefics3Config
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    tok = _tokenizer_with(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"],
                          IDEFICS3_TEMPLATE)
    text = dict(TEXT, model_type="llama", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"), pad_token_id=tok.pad_token_id)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 56, "patch_size": 14}
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 56},
                                                max_image_size={"longest_edge": 56})
    return _save(folder, config, tok, image_processor, IDEFICS3_TEMPLATE, {"image_seq_len": 4}, seed)


def make_tiny_internvl(folder: Path, seed: int = 0) -> Path:
    """InternVL in transformers' own layout (the -hf checkpoints): InternViT-like tower, pixel-shuffle MLP projector,
    Qwen2 text model; one 56x56 tile per image, 4 image tokens."""
    from transformers import InternVLConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    marks = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = _tokenizer_with([], INTERNVL_TEMPLATE, marks)
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": [56, 56], "patch_size": [14, 14]}
    config = InternVLConfig(text_config=text, vision_config=vision, image_token_id=tok.context_image_token_id,
                            downsample_ratio=0.5, vision_feature_layer=-1, tie_word_embeddings=True)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=False,
                                               max_patches=1)
    return _save(folder, config, tok, image_processor, INTERNVL_TEMPLATE, {"image_seq_length": 4}, seed)


BUILDERS.update({"gemma3": make_tiny_gemma3, "idefics3": make_tiny_idefics3, "internvl": make_tiny_internvl})


def make_tiny_qwen3_vl(folder: Path, seed: int = 0) -> Path:
    """Qwen3-VL (16 px patches, deepstack features from the tower's layer 0, interleaved M-RoPE); images 32..64 px,
    1 to 4 image tokens."""
    from transformers import Qwen3VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tok = _tokenizer(QWEN2_VL_TOKENS, QWEN2_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2_VL_TOKENS}
    text = dict(TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True})
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
              "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, min_pixels=32 * 32, max_pixels=64 * 64)
    return _save(folder, config, tok, image_processor, QWEN2_VL_TEMPLATE, None, seed)


BUILDERS["qwen3-vl"] = make_tiny_qwen3_vl


def make_tiny_llava_onevision(folder: Path, seed: int = 0) -> Path:
    """LLaVA-OneVision (SigLIP tower, anyres tiles of 28 px from a 2x2 grid, Qwen2 text model): a picture is a base
    tile plus its grid tiles, 4 tokens each, and a newline token per row."""
    from transformers import LlavaOnevisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok = _tokenizer(["<image>", "<video>"], LLAVA_TEMPLATE)
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaOnevisionConfig(text_config=text, vision_config=vision, image_grid_pinpoints=pinpoints,
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"),
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  tie_word_embeddings=True)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    settings = {"num_image_tokens": 4, "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9"}
    return _save(folder, config, tok, image_processor, LLAVA_TEMPLATE, settings, seed)


BUILDERS["llava-onevision"] = make_tiny_llava_onevision
