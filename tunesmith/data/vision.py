"""Images in conversation rows, for vision-language models. Two ways to write them, both normalised to content parts
{"type": "image", "image": REF} beside {"type": "text", "text": ...}, which is what VLM chat templates render:

    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "charts/1.png"}},
                                               {"type": "text", "text": "What is the trend?"}]}, ...]}
    {"messages": [{"role": "user", "content": "<image>What is the trend?"}, ...], "images": ["charts/1.png"]}

The first is OpenAI's content parts ({"type": "image", "image"|"url"|"path": ...} as Hugging Face writes them works
too); the second is the peers' convention (LLaMA-Factory, ms-swift): an `images` column, one `<image>` placeholder per
image, in order, in any format (messages, conversations, instruction/output, prompt/response).

REF is a local path, resolved relative to the data file's folder and stored absolute, or a data: URI (base64). Every
image is opened while the data is checked, so a missing file, a corrupt one or a placeholder count that does not
match the images is a `file:line: field: problem` before any weights load. Remote URLs are refused here: download
them first (a training run should not depend on a web server).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.data.images import ImageError, is_remote, open_image, portable

PLACEHOLDER = "<image>"
IMAGE_TYPES = ("image", "image_url")
PART_TYPES = ("text", *IMAGE_TYPES)
Report = Callable[[str, str], None]


def is_parts(value: Any) -> bool:
    """Content parts with at least one image (text-only part lists stay plain strings)."""
    return (isinstance(value, list) and all(isinstance(p, dict) and p.get("type") in PART_TYPES for p in value)
            and any(p.get("type") in IMAGE_TYPES for p in value))


def parts(value: list[dict]) -> list[dict]:
    """Content parts as templates take them: text parts, and image parts {"type": "image", "image": REF} where REF
    is what the row gave (made usable by `attach`); a part without a reference keeps None (reported there)."""
    out = []
    for p in value:
        if p["type"] == "text":
            out.append({"type": "text", "text": str(p.get("text", ""))})
            continue
        ref = p.get("image_url", p.get("image", p.get("url", p.get("path"))))
        if isinstance(ref, dict) and "url" in ref:  # OpenAI: {"image_url": {"url": ..., "detail": ...}}
            ref = ref["url"]
        out.append({"type": "image", "image": ref})
    return out


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def images_of(messages: list[dict]) -> list[Any]:
    """Every image reference of a conversation, in the order the template renders them."""
    return [p["image"] for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image"]


def has_images(messages: list[dict] | None) -> bool:
    return bool(messages) and any(isinstance(m.get("content"), list) and any(
        isinstance(p, dict) and p.get("type") == "image" for p in m["content"]) for m in messages)


def attach(messages: list[dict], data: dict, source: str, field: str, bad: Report) -> list[dict] | None:
    """A row's messages with its images in place (the `images` column's, at the <image> placeholders) and every
    reference made portable and opened once; None with the problem reported when one cannot be used."""
    if data.get("images") not in (None, []):
        messages = _place(messages, data["images"], bad)
        if messages is None:
            return None
    if not has_images(messages):
        return messages
    base = Path(source).parent if source and Path(source).is_file() else None
    column = 0
    for i, m in enumerate(messages):
        if not isinstance(m.get("content"), list):
            continue
        for j, p in enumerate(m["content"]):
            if p.get("type") != "image":
                continue
            from_column = p.pop("_column", False)
            where = f"images[{column}]" if from_column else f"{field}[{i}].content[{j}]"
            column += from_column
            if m["role"] != "user":
                bad(where, f"an image in a {m['role']} turn; images go in user turns (a model does not learn to "
                           "write images)")
                return None
            try:
                if is_remote(p["image"]):
                    raise ImageError(f"{p['image'][:100]}: remote image URLs are not read while checking data; "
                                     "download the image and give its path")
                p["image"] = portable(p["image"], base)
                open_image(p["image"])
            except ImageError as err:
                bad(where, str(err))
                return None
    return messages


def _place(messages: list[dict], images: Any, bad: Report) -> list[dict] | None:
    """An `images` column: each <image> placeholder in the text becomes the next image's part. The number of
    placeholders must equal the number of images."""
    if not isinstance(images, list):
        images = [images]
    found = sum(text_of(m["content"]).count(PLACEHOLDER) for m in messages)
    if found != len(images):
        bad("images", f"{len(images)} image(s) but {found} {PLACEHOLDER} placeholder(s) in the messages; put one "
                      f"{PLACEHOLDER} where each image goes, in order")
        return None
    queue = iter(images)
    out = []
    for m in messages:
        text = m["content"] if isinstance(m["content"], str) else None
        if text is None or PLACEHOLDER not in text:
            out.append(m)
            continue
        pieces: list[dict] = []
        for k, chunk in enumerate(text.split(PLACEHOLDER)):
            if k:
                pieces.append({"type": "image", "image": next(queue), "_column": True})
            if chunk:
                pieces.append({"type": "text", "text": chunk})
        out.append({**m, "content": pieces})
    return out
