"""The vision side of a vision-language model, for the plan: the tower's (and aligner's) parameters and the image
tokens each picture becomes.

    tower = vision_tower(config_json, image_size=448)    # None for a text-only config
    tower.params, tower.tokens_per_image                   # 675_759_104 and 256 for Qwen2-VL-7B at 448x448

The parameters are counted the way transformers builds the model: its class is built on the meta device (no memory,
no weights) from the config with a one-layer, tiny-vocabulary language model, and everything outside the language
model and its head is counted; the tower and its aligner (merger, projector) do not depend on the language model's
depth or vocabulary, only on its width. Exact for every family the pinned transformers builds, at the cost of
importing it (a few seconds), paid only for configs with a vision_config. The image tokens follow each family's
processor: Qwen2-VL/2.5-VL a token per 2x2 patches of 14 pixels, LLaVA a token per patch (the CLS token dropped),
Gemma 3 a fixed mm_tokens_per_image, Idefics3/SmolVLM a token per scale_factor^2 patches of each tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VisionTower:
    params: int              # tower + aligner
    width: int               # the tower's hidden size
    depth: int               # its layers
    mlp: int                 # its MLP width
    patches_per_token: int   # patches the tower runs over per image token (Qwen2-VL merges 2x2)
    tokens_per_image: int    # image tokens one picture becomes in the language model's sequence
    image_size: int          # the side, in pixels, that tokens_per_image is counted at


def vision_tower(cfg: dict[str, Any], image_size: int | None = None) -> VisionTower | None:
    vision = cfg.get("vision_config")
    if not isinstance(vision, dict):
        return None
    model_type = str(cfg.get("model_type", ""))
    width = int(vision.get("embed_dim") or vision.get("hidden_size") or 0)
    depth = int(vision.get("depth") or vision.get("num_hidden_layers") or 0)
    mlp = int(vision.get("intermediate_size") or width * float(vision.get("mlp_ratio") or 4))
    patch = int(vision.get("patch_size") or 14)
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        merge = int(vision.get("spatial_merge_size") or 2)
        side = image_size or 448  # dynamic resolution: the plan's --image-size (448: a common chart or photo)
        per_token = merge * merge
        tokens = max(1, (side // patch) ** 2 // per_token)
    elif cfg.get("mm_tokens_per_image"):  # Gemma 3: a fixed count, whatever the size
        side = image_size or int(vision.get("image_size") or 896)
        tokens = int(cfg["mm_tokens_per_image"])
        per_token = max(1, (int(vision.get("image_size") or side) // patch) ** 2 // tokens)
    elif cfg.get("scale_factor"):  # Idefics3 / SmolVLM: each tile's patches shuffled by scale_factor^2
        tile = int(vision.get("image_size") or 384)
        side = image_size or tile
        per_token = int(cfg["scale_factor"]) ** 2
        across = -(-side // tile)
        tiles = across * across + (1 if across > 1 else 0)  # the tiles, and a downscaled whole picture beside them
        tokens = tiles * (tile // patch) ** 2 // per_token
    else:  # LLaVA and other CLIP/SigLIP towers: one token per patch
        side = image_size or int(vision.get("image_size") or 336)
        per_token = 1
        tokens = (side // patch) ** 2
    return VisionTower(params=_vision_params(cfg), width=width, depth=depth, mlp=mlp, patches_per_token=per_token,
                       tokens_per_image=tokens, image_size=side)


def _vision_params(cfg: dict[str, Any]) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    small = {**cfg}
    text = dict(cfg.get("text_config") or {})
    text.update(num_hidden_layers=1, vocab_size=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    for key in ("layer_types", "max_window_layers", "full_attn_idxs"):  # per-layer lists of the real depth
        text.pop(key, None)
    small["text_config"] = text
    small.pop("vocab_size", None)
    for key in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                "vision_end_token_id", "boi_token_index", "eoi_token_index", "pad_token_id"):
        if key in small:
            small[key] = 1  # token ids beyond the tiny vocabulary would fail the build
    config = AutoConfig.for_model(**small)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for name, p in model.named_parameters()
               if "language_model" not in name and not name.startswith("lm_head"))


def tower_activation_bytes(tower: VisionTower, images: int, micro_batch: int, dtype_bytes: int,
                           trained: bool) -> float:
    """The tower's activations over a micro-batch's pictures. A frozen tower (LoRA on the language model, the
    default) saves nothing for backward: one layer's temporaries at a time. A trained one saves, per patch and layer,
    the norm inputs, q/k/v, the attention output and the MLP's input, hidden and activated hidden."""
    patches = images * micro_batch * tower.tokens_per_image * tower.patches_per_token
    per_layer = (6 * tower.width + 2 * tower.mlp) * dtype_bytes * patches
    return per_layer * (tower.depth if trained else 1)
