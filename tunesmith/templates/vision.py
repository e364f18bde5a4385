"""The renderer of vision-language models: Template's exact segments (templates/chat.py), with images.

    template = VisionTemplate(processor)
    ids, labels = template.render_images(messages, images)     # sft: labels -100 on prompts and every vision token
    ids = template.render_prompt_images(messages, images)      # infer, deploy, eval: ends with the assistant header
    pixels = template.image_inputs(images)                     # pixel_values (+ image_grid_thw, ...) for the model

Messages carry image parts ({"type": "image"}) where the pictures go; the model's chat template renders each as the
processor's placeholder (Qwen2-VL: <|vision_start|><|image_pad|><|vision_end|>, LLaVA: <image>, Gemma 3:
<start_of_image>). The text is cut at the same assistant-turn points as for text models; a segment holding k
placeholders is encoded by the processor itself with its k images, so each placeholder becomes as many image tokens
as the processor gives that image (its size decides), and the prompt served later is a token-for-token prefix of what
was trained. Labels are -100 on every vision token (placeholders, their expansion, image start/end and row markers),
wherever it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import TemplateError
from tunesmith.templates.chat import IGNORE, Template

# What a processor returns for the text; everything else it returns belongs to the images.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "offset_mapping"})
# Tokens of the families' vision vocabularies (models/vision.py lists them per family); never trained.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<image>", "<video>",
                 "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<fake_token_around_image>",
                 "<global-img>", "<img>", "</img>", "<IMG_CONTEXT>", "<row_1_col_1>")


def image_parts(messages: list[dict]) -> tuple[list[dict], int]:
    """Messages as a VLM chat template takes them, and their number of images: content lists keep their text parts,
    each image part ({"type": "image"|"image_url", ...}) becomes {"type": "image"} (the picture goes separately)."""
    out, count = [], 0
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            out.append(m)
            continue
        parts = []
        for p in content:
            kind = p.get("type") if isinstance(p, dict) else None
            if kind in ("image", "image_url"):
                parts.append({"type": "image"})
                count += 1
            elif kind == "text":
                parts.append({"type": "text", "text": str(p.get("text", ""))})
            else:
                raise TemplateError(f"content part of type {kind!r}: expected text, image or image_url")
        out.append({**m, "content": parts})
    return out, count


class VisionTemplate(Template):
    def __init__(self, processor: Any, default_system: str | None = None, chat_template_kwargs: dict | None = None):
        self.processor = processor
        tokenizer = processor.tokenizer
        if getattr(processor, "chat_template", None):
            tokenizer.chat_template = processor.chat_template
        self.placeholder = processor.image_token
        super().__init__(tokenizer, default_system=default_system, chat_template_kwargs=chat_template_kwargs)
        vocab = tokenizer.get_vocab()
        ids = {vocab[t] for t in VISION_TOKENS if t in vocab}
        ids |= {i for t, i in vocab.items() if t.startswith("<row_") and "_col_" in t}  # Idefics3's tile markers
        ids.add(processor.image_token_id)
        self.vision_token_ids = frozenset(ids)

    # -------------------------------------------------------------------------

    def render_images(self, messages: list[dict], images: list[Any], loss_on: str = "assistant",
                      tools: list | None = None) -> tuple[list[int], list[int]]:
        """Ids of the whole conversation with its images' tokens, and labels (-100 outside what is trained and on
        every vision token)."""
        messages, _ = self._checked(messages, images)
        segs = self.segments(messages, add_generation_prompt=False, loss_on=loss_on, tools=tools)
        ids, labels = [], []
        for seg, seg_ids in zip(segs, self._encode_segments([s.text for s in segs], images)):
            ids += seg_ids
            labels += [IGNORE if (not seg.trained or i in self.vision_token_ids) else i for i in seg_ids]
        return ids, labels

    def render_prompt_images(self, messages: list[dict], images: list[Any], tools: list | None = None) -> list[int]:
        """Ids that ask the model for the next assistant turn: a prefix of the training ids of the same turns."""
        messages, _ = self._checked(messages, images)
        segs = self.segments(messages, add_generation_prompt=True, loss_on="assistant", tools=tools, prompt_only=True)
        return [i for seg_ids in self._encode_segments([s.text for s in segs], images) for i in seg_ids]

    def image_inputs(self, images: list[Any]) -> dict[str, Any]:
        """The processor's image tensors for these images (pixel_values and the family's extras: image_grid_thw,
        pixel_attention_mask, image_sizes...), exactly as it computes them beside the text, with the number of image
        tokens it expands them to under "num_image_tokens"."""
        if not images:
            return {}
        out = self.processor(text=[self.placeholder * len(images)], images=list(images), return_tensors="pt",
                             add_special_tokens=False)
        tensors = {k: v for k, v in out.items() if k not in TEXT_KEYS}
        tensors["num_image_tokens"] = int((out["input_ids"] == self.processor.image_token_id).sum())
        return tensors

    def text_inputs(self, ids: list[int]) -> dict[str, list[int]]:
        """Per-token inputs the family needs beside the ids, as its processor computes them: the modality of each
        token (0 text, 1 image), as mm_token_type_ids (Qwen2-VL's M-RoPE) or token_type_ids (Gemma 3's
        bidirectional image attention)."""
        if not getattr(self.processor, "return_mm_token_type_ids", False):
            return {}
        names = self.processor.model_input_names
        key = "mm_token_type_ids" if "mm_token_type_ids" in names else "token_type_ids"
        return {key: list(self.processor.create_mm_token_type_ids([ids])[0])}

    def _apply(self, messages: list[dict], add_generation_prompt: bool, tools: list | None,
               chat_template_kwargs: dict | None = None) -> str:
        # VLM templates are written for content as a list of parts (SmolVLM's reads content[0]['type']); text is
        # given as a text part, which every template here renders as it renders the string
        listed = [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str)
                  else m for m in messages]
        return super()._apply(listed, add_generation_prompt, tools, chat_template_kwargs)

    def save(self, folder: str | Path) -> None:
        """Beside the tokenizer and template: the processor's settings, so models/vision.py's load_processor builds the
        same processor from the run folder."""
        super().save(folder)
        save_processor(self.processor, folder)

    # -------------------------------------------------------------------------

    def _checked(self, messages: list[dict], images: list[Any]) -> tuple[list[dict], int]:
        messages, count = image_parts(messages)
        if count != len(images):
            raise TemplateError(f"{count} image part(s) in the messages but {len(images)} image(s) given")
        return messages, count

    def _encode_segments(self, texts: list[str], images: list[Any]) -> list[list[int]]:
        """Each text's ids; a text holding placeholders is encoded by the processor with the next images, in order."""
        out, used = [], 0
        for text in texts:
            k = text.count(self.placeholder)
            if k == 0:
                out.append(self._encode(text))
                continue
            if used + k > len(images):
                raise TemplateError(f"the chat template rendered more than {len(images)} image placeholder(s) "
                                    f"({self.placeholder!r}) for {len(images)} image(s)")
            enc = self.processor(text=[text], images=list(images[used: used + k]), add_special_tokens=False)
            out.append(list(enc["input_ids"][0]))
            used += k
        if used != len(images):
            raise TemplateError(f"the chat template rendered {used} image placeholder(s) ({self.placeholder!r}) for "
                                f"{len(images)} image(s); does its template render image parts?")
        return out


def save_processor(processor: Any, folder: str | Path) -> None:
    """What load_processor reads back: the image processor's and the processor's settings and the chat template (the
    tokenizer is saved by the template)."""
    folder = Path(folder)
    processor.image_processor.save_pretrained(folder)
    import inspect

    parts = {"self", "image_processor", "tokenizer", "video_processor", "chat_template", "kwargs"}
    names = [k for k in inspect.signature(type(processor).__init__).parameters if k not in parts]
    attrs = {k: getattr(processor, k) for k in names if getattr(processor, k, None) is not None}
    settings = {"processor_class": type(processor).__name__, **_jsonable(attrs)}
    (folder / "processor_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    if processor.chat_template:
        (folder / "chat_template.jinja").write_text(processor.chat_template)


def _jsonable(values: dict) -> dict:
    out = {}
    for k, v in values.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out
