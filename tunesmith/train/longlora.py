"""`--tuner longlora` (LongLoRA, Chen et al. 2024): extend a model's context on a LoRA budget.

    config = scaled_config(cfg, folder)        # RoPE scaled to longlora.target_length (linear | dynamic | yarn)
    model = peft(model, lora_config(cfg, model))  # LoRA (the lora section) + trainable embeddings and norms
    use_s2_attention(model, ratio)             # shifted sparse attention while training (models/s2_attention.py)
    save_merged(model, folder)                 # final/: LoRA merged, trained embeddings/norms, the scaled RoPE

The result is a whole model whose config.json carries the RoPE scaling, so infer, deploy, export and eval load it as
they load a full fine-tune and run it with full attention (LongLoRA's design: S2-Attn only while training).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError

log = logging.getLogger("tunesmith")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def rope_parameters(config: Any, kind: str, target: int) -> dict[str, Any] | None:
    """The config values (rope_parameters, max_position_embeddings) that extend `config` to `target` tokens; None
    when the model already covers the target (nothing to scale) or kind is none."""
    params = dict(config.rope_parameters or {})
    if kind == "none":
        return None
    original = config.max_position_embeddings
    if params.get("rope_type", "default") != "default":
        raise ConfigError(f"longlora.rope_scaling: the model's RoPE is already scaled ({params['rope_type']}); "
                          "use longlora.rope_scaling none to keep it")
    if target <= original:
        log.info("longlora: the model already takes %d tokens (target_length %d): RoPE left as it is", original,
                 target)
        return None
    factor = target / original
    scaled = {"rope_theta": params.get("rope_theta", 10000.0), "rope_type": kind, "factor": factor}
    if "partial_rotary_factor" in params:
        scaled["partial_rotary_factor"] = params["partial_rotary_factor"]
    if kind == "yarn":
        scaled["original_max_position_embeddings"] = original
    # dynamic NTK reads max_position_embeddings as the trained length and scales beyond it at run time
    return {"rope_parameters": scaled, "max_position_embeddings": original if kind == "dynamic" else target}


def scaled_config(cfg: Any, folder: Path) -> Any:
    """The base model's config with RoPE scaled to the run's target length (longlora.target_length, else
    max_length), or None when nothing changes."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    text = config.get_text_config()
    target = cfg.longlora.target_length or cfg.max_length
    change = rope_parameters(text, cfg.longlora.rope_scaling, target)
    if change is None:
        return None
    for key, value in change.items():
        setattr(text, key, value)
    log.info("longlora: RoPE %s x%.2f, %d -> %d tokens", cfg.longlora.rope_scaling,
             change["rope_parameters"]["factor"], change["rope_parameters"].get("original_max_position_embeddings",
                                                                                  text.max_position_embeddings),
             target)
    return config


def trainable_modules(model: Any, kinds: list[str]) -> list[str]:
    """Names (the last part, as peft's modules_to_save matches them) of the embedding and norm layers that train in
    full beside the adapters."""
    import torch

    names: set[str] = set()
    embeddings = model.get_input_embeddings()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "embed" in kinds and module is embeddings:
            names.add(leaf)
        if "norm" in kinds and (isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")):
            names.add(leaf)
    return sorted(names)


def lora_config(cfg: Any, model: Any) -> Any:
    """LoRA from the lora section, with the embeddings and norms as modules_to_save; a model with tied embeddings
    keeps its LM head tied to the trained embeddings (peft's ensure_weight_tying)."""
    from tunesmith.models import load as models

    config = models.lora_config(cfg.lora, "lora", model)
    config.modules_to_save = trainable_modules(model, cfg.longlora.trainable)
    config.ensure_weight_tying = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    return config


def save_merged(model: Any, folder: Path) -> None:
    """Replace the adapter the Trainer saved in `folder` with the merged model (config.json with the scaled RoPE,
    attention left to the loader: sdpa)."""
    peft_model = getattr(model, "module", model)
    merged = peft_model.merge_and_unload()
    merged.config._attn_implementation = "sdpa"  # S2-Attn is registered in training processes only
    for name in ADAPTER_FILES:
        (folder / name).unlink(missing_ok=True)
    merged.save_pretrained(str(folder))
