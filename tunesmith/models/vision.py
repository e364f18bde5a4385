"""Vision-language model families: how to recognise one from its config, build its processor without torchvision,
and where its vision tower, aligner (projector) and language model sit, for freezing and LoRA targets.

    model, processor = load_vision_model("runs/chart-sft/final", torch.bfloat16)   # a base folder, or an adapter run
    inputs = encode_vision_prompt(processor, messages, images)                      # input_ids, pixel_values, ...
    out = model.generate(**inputs, max_new_tokens=64)

Processors: transformers' AutoProcessor also builds each family's *video* processor, and those need torchvision, which
does not load beside our CPU torch (ENVIRONMENT.md). So the processor is built here from its parts: the tokenizer, the
image processor with backend="pil" (Pillow + numpy, the same numbers as the torchvision one within resize rounding),
the chat template and processor_config.json's settings; video is left out. Per family, without torchvision (each built,
checked and trained in tests/vision/ from a tiny model): Qwen2-VL, Qwen2.5-VL and Qwen3-VL
(Qwen2-VL's PIL image processor; their processors want a video processor, built here without one: images only),
LLaVA (CLIP/SigLIP PIL processor), Gemma 3 (its PIL processor), Idefics3 (its PIL processor; SmolVLM's own processor
also needs the num2words package, a clear error without it), InternVL (the transformers-native "-hf" checkpoints, not
the trust_remote_code ones: GotOcr2's PIL processor), LLaVA-OneVision (its PIL processor; anyres tiles).

The renderer is templates/vision.py's VisionTemplate: training and serving encode through the same code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelNotFoundError

VISION_TEMPLATE_ATTR = "_tunesmith_template"


@dataclass(frozen=True)
class VisionFamily:
    name: str
    model_types: tuple[str, ...]  # config.model_type of the checkpoints
    processor: str  # transformers' processor class
    vision: tuple[str, ...]  # module name prefixes of the vision tower (in AutoModelForImageTextToText's model)
    aligner: tuple[str, ...]  # ... of the aligner / projector between the tower and the language model
    language: str  # ... of the language model (LoRA targets by default)
    placeholder: str  # what the chat template renders per image (the processor's image_token)
    packing: str | None = None  # None: packing with images is exact; else why it is refused
    notes: str = ""


FAMILIES = [
    VisionFamily("qwen2-vl", ("qwen2_vl",), "Qwen2VLProcessor", ("model.visual.patch_embed", "model.visual.blocks",
                 "model.visual.rotary_pos_emb"), ("model.visual.merger",), "model.language_model", "<|image_pad|>",
                 notes="dynamic resolution (min_pixels/max_pixels), M-RoPE 3-D positions"),
    VisionFamily("qwen2.5-vl", ("qwen2_5_vl",), "Qwen2_5_VLProcessor", ("model.visual.patch_embed",
                 "model.visual.blocks", "model.visual.rotary_pos_emb"), ("model.visual.merger",),
                 "model.language_model", "<|image_pad|>", notes="window attention in the vision tower, M-RoPE"),
    VisionFamily("qwen3-vl", ("qwen3_vl", "qwen3_vl_moe"), "Qwen3VLProcessor", ("model.visual.patch_embed",
                 "model.visual.blocks", "model.visual.pos_embed", "model.visual.rotary_pos_emb"),
                 ("model.visual.merger", "model.visual.deepstack_merger_list"), "model.language_model",
                 "<|image_pad|>", notes="deepstack features, interleaved M-RoPE; images only (its video processor "
                 "needs torchvision)"),
    VisionFamily("llava", ("llava",), "LlavaProcessor", ("model.vision_tower",), ("model.multi_modal_projector",),
                 "model.language_model", "<image>", notes="CLIP/SigLIP tower + MLP projector"),
    VisionFamily("llava-onevision", ("llava_onevision",), "LlavaOnevisionProcessor", ("model.vision_tower",),
                 ("model.multi_modal_projector", "model.image_newline"), "model.language_model", "<image>",
                 notes="anyres tiles (a base tile plus its grid), a newline token per row"),
    VisionFamily("idefics3", ("idefics3", "smolvlm"), "Idefics3Processor", ("model.vision_model",),
                 ("model.connector",), "model.text_model", "<image>",
                 notes="SmolVLM is model_type smolvlm; its processor (SmolVLMProcessor) needs the num2words "
                 "package, Idefics3's does not"),
    VisionFamily("gemma3", ("gemma3",), "Gemma3Processor", ("model.vision_tower",), ("model.multi_modal_projector",),
                 "model.language_model", "<start_of_image>",
                 packing="Gemma 3 attends bidirectionally within each image (token_type_ids), which padding-free "
                 "packing's masks do not carry", notes="needs token_type_ids in training (1 on image tokens)"),
    VisionFamily("internvl", ("internvl",), "InternVLProcessor", ("model.vision_tower",),
                 ("model.multi_modal_projector",), "model.language_model", "<IMG_CONTEXT>",
                 notes="the transformers-native OpenGVLab/InternVL*-hf checkpoints; GotOcr2 image processor"),
]
BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}
# SmolVLM has its own processor class (same layout as Idefics3)
PROCESSOR_BY_MODEL_TYPE = {"smolvlm": "SmolVLMProcessor"}


def _config(path_or_config: Any) -> Any:
    if not isinstance(path_or_config, (str, Path)):
        return path_or_config
    path = Path(path_or_config).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return _config(base) if base else None
    if not (path / "config.json").exists():
        from tunesmith.models.load import resolve

        path = resolve(str(path_or_config))
    return json.loads((path / "config.json").read_text())


def _model_type(config: Any) -> str | None:
    return config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)


def family_of(path_or_config: Any) -> VisionFamily | None:
    """The family of a model folder, hub id, registry name, config or config dict; None for a text-only model."""
    try:
        config = _config(path_or_config)
    except (ModelNotFoundError, OSError, ValueError):
        return None
    return BY_MODEL_TYPE.get(_model_type(config)) if config is not None else None


def is_vision_model(path_or_config: Any) -> bool:
    """True for a model of a supported vision-language family (or an adapter run trained on one)."""
    return family_of(path_or_config) is not None


# -----------------------------------------------------------------------------
# Processor and model


def load_processor(folder: str | Path) -> Any:
    """The family's processor from a model (or run) folder, with the PIL image processor and no video processor."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(folder)
    config = _config(folder)
    family = BY_MODEL_TYPE.get(_model_type(config))
    if family is None:
        raise ModelNotFoundError(f"{folder}: not a vision-language model of a supported family "
                                 f"({', '.join(f.name for f in FAMILIES)})")
    cls = getattr(transformers, PROCESSOR_BY_MODEL_TYPE.get(_model_type(config), family.processor))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        return _build(cls, folder, tokenizer, image_processor)
    except ImportError as err:  # a processor's own optional dependency (SmolVLM: num2words)
        raise ModelNotFoundError(f"{folder}: the {family.name} processor cannot be built here: {err}") from None


def _build(cls: type, folder: Path, tokenizer: Any, image_processor: Any) -> Any:
    settings = _processor_settings(folder)
    template = _chat_template(folder, settings) or getattr(tokenizer, "chat_template", None)
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted and k not in ("image_processor", "tokenizer",
                                                                                "video_processor", "chat_template")}
    if "video_processor" in accepted:
        cls, kwargs["video_processor"] = _without_video(cls), None
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template, **kwargs)


def _without_video(cls: type) -> type:
    """The processor class, accepting no video processor (transformers checks each part's class, and the video
    processors' classes need torchvision to exist). Same name, so the family is still read from it."""

    def check_argument_for_proper_class(self, argument_name, argument):
        return None if argument is None else cls.check_argument_for_proper_class(self, argument_name, argument)

    def save_pretrained(self, save_directory, **kwargs):  # what load_processor reads (a trainer's checkpoints)
        from tunesmith.templates.vision import save_processor

        self.tokenizer.save_pretrained(save_directory)
        save_processor(self, save_directory)

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "save_pretrained": save_pretrained, "__module__": __name__})


def _processor_settings(folder: Path) -> dict:
    path = folder / "processor_config.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data.get("processor", data) if isinstance(data.get("processor"), dict) else data


def _chat_template(folder: Path, settings: dict) -> str | None:
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").exists():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return settings.get("chat_template")


def load_vision_model(path_or_id: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model, processor) of a VLM folder, hub id or registry name; for an adapter run's final/ (adapter_config.json),
    its base model with the adapter attached (peft) and the run's processor and chat template."""
    import torch
    from transformers import AutoModelForImageTextToText

    path = Path(path_or_id).expanduser()
    dtype = dtype or torch.float32
    if path.is_dir() and (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model, _ = load_vision_model(base, dtype)
        model = PeftModel.from_pretrained(model, str(path))
        return model.eval(), _processor_with_template(path)
    if not path.is_dir():
        from tunesmith.models.load import resolve

        path = resolve(str(path_or_id))
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    return model.eval(), _processor_with_template(path)


def _processor_with_template(folder: Path) -> Any:
    """The processor, carrying the VisionTemplate the run saved (default system prompt, chat_template_kwargs)."""
    from tunesmith.templates.chat import TEMPLATE_FILE
    from tunesmith.templates.vision import VisionTemplate

    processor = load_processor(folder)
    info_path = folder / TEMPLATE_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    setattr(processor, VISION_TEMPLATE_ATTR, VisionTemplate(processor, default_system=info.get("default_system"),
                                                            chat_template_kwargs=info.get("chat_template_kwargs")))
    return processor


def template_of(processor: Any) -> Any:
    """The VisionTemplate a processor renders with (built once and kept on it)."""
    template = getattr(processor, VISION_TEMPLATE_ATTR, None)
    if template is None:
        from tunesmith.templates.vision import VisionTemplate

        template = VisionTemplate(processor)
        setattr(processor, VISION_TEMPLATE_ATTR, template)
    return template


def encode_vision_prompt(processor: Any, messages: list[dict], images: list[Any], *,
                         add_generation_prompt: bool = True) -> dict:
    """Model inputs for one conversation with images: input_ids, attention_mask, pixel_values and the family's extras
    (image_grid_thw, token_type_ids...), torch tensors with batch dimension 1, rendered exactly as training renders.

    messages: OpenAI-style, image parts ({"type": "image"} or {"type": "image_url", ...}) where the pictures go, in
    the order of `images` (PIL images). add_generation_prompt=False renders the whole conversation (no labels)."""
    import torch

    template = template_of(processor)
    if add_generation_prompt:
        ids = template.render_prompt_images(messages, images)
    else:
        ids, _ = template.render_images(messages, images, loss_on="all")
    out: dict[str, Any] = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    pixels = template.image_inputs(images)
    pixels.pop("num_image_tokens", None)
    out.update(pixels)
    out.update({k: torch.tensor([v]) for k, v in template.text_inputs(ids).items()})
    return out


# -----------------------------------------------------------------------------
# Module names: freezing and LoRA targets


def family_of_model(model: Any) -> VisionFamily | None:
    return BY_MODEL_TYPE.get(getattr(model.config, "model_type", None))


def _names(model: Any, prefixes: tuple[str, ...]) -> list[str]:
    return [n for n, _ in model.named_modules() if any(n == p or n.startswith(p + ".") for p in prefixes)]


def lora_target_regex(model: Any, vision: bool = False, aligner: bool = False) -> str:
    """peft target_modules (a regex over full module names): the language model's linear layers, plus the vision
    tower's and the aligner's when those train."""
    import torch

    family = family_of_model(model)
    prefixes = (family.language,) + (family.vision if vision else ()) + (family.aligner if aligner else ())
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and any(n.startswith(p + ".") for p in prefixes)]
    if not names:
        raise ModelNotFoundError(f"{family.name}: no linear layers under {', '.join(prefixes)}; is this model laid out "
                                 "as transformers 5 builds it?")
    return "|".join(re.escape(n) for n in names)


def quantize_skip(folder: Any) -> list[str]:
    """Modules QLoRA leaves unquantized in a VLM: the vision tower, the aligner and the LM head."""
    family = family_of(folder)
    return [*family.vision, *family.aligner, "lm_head"] if family else ["lm_head"]


def trainable_by_part(model: Any) -> dict[str, list[tuple[str, Any]]] | None:
    """The trainable parameters of a VLM (peft-wrapped or not) by part: language (all but the two others),
    vision_tower, aligner, each as (name, parameter); None for a text model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_of_model(base)
    if family is None:
        return None
    parts: dict[str, list[tuple[str, Any]]] = {"language": [], "vision_tower": [], "aligner": []}
    for name, param in base.named_parameters():
        if not param.requires_grad:
            continue
        part = ("vision_tower" if _under(name, family.vision) else "aligner" if _under(name, family.aligner)
                else "language")
        parts[part].append((name, param))
    return parts


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_parts(model: Any, vision: bool, aligner: bool) -> dict[str, int]:
    """Set requires_grad False on the vision tower and/or the aligner; returns their parameter counts by part."""
    family = family_of_model(model)
    counts = {}
    for part, prefixes, frozen in (("vision_tower", family.vision, vision), ("aligner", family.aligner, aligner)):
        total = 0
        for name, param in model.named_parameters():
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                total += param.numel()
                if frozen:
                    param.requires_grad_(False)
        counts[part] = total
    return counts
