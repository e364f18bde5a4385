"""Images as data rows and requests name them: a local path (relative to the data file), a `data:` URI (base64), raw
bytes, a {"bytes"|"path"} dict (Hugging Face datasets' Image feature) or a PIL image, opened as an RGB PIL image.

    image = open_image("charts/0001.png", base=Path("data"))   # ImageError saying why when missing or unreadable
    image = open_image("data:image/png;base64,iVBO...")
    problem = image_problem(ref, base)                         # the same check as a message, or None

Remote URLs are not fetched here: `fetch_remote` (a callable url -> bytes) is the caller's choice. The default refuses,
so a training run never depends on a web server; the server passes its own fetcher, with its size and time limits,
when started to allow remote images.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

REMOTE = ("http://", "https://", "ftp://")
# Pillow refuses images over 2 x MAX_IMAGE_PIXELS as decompression bombs (and only warns between 1x and 2x); the
# limit is Pillow's default (about 89 megapixels), kept explicit so a reader knows where it comes from.
MAX_PIXELS = 89_478_485


class ImageError(ValueError):
    """An image that cannot be used; the message says why and what to do."""


def refuse_remote(url: str) -> bytes:
    raise ImageError(f"{url[:100]}: remote image URLs are not fetched here; download the image and give its path")


def is_remote(ref: Any) -> bool:
    return isinstance(ref, str) and ref.lower().startswith(REMOTE)


def is_data_uri(ref: Any) -> bool:
    return isinstance(ref, str) and ref[:5].lower() == "data:"


def data_uri_bytes(uri: str) -> bytes:
    """The bytes of a base64 data URI (data:image/png;base64,....)."""
    head, sep, body = uri.partition(",")
    if not sep:
        raise ImageError("data URI without a comma before its data")
    if ";base64" not in head.lower():
        raise ImageError(f"data URI {head[:40]!r} is not base64 (expected data:image/...;base64,...)")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"data URI holds invalid base64 ({err})") from None


def as_data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def resolve_path(ref: str, base: Path | None) -> Path:
    """A path as a row names it: absolute, or relative to `base` (the data file's folder)."""
    path = Path(ref.removeprefix("file://")).expanduser()
    return path if path.is_absolute() or base is None else (base / path)


def open_image(ref: Any, base: Path | None = None, fetch_remote: Callable[[str], bytes] = refuse_remote) -> Any:
    """An RGB PIL image from any reference above; ImageError says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, dict):  # datasets' Image feature without decoding
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        raw, name = bytes(ref), "image bytes"
    elif is_data_uri(ref):
        raw, name = data_uri_bytes(ref), "data URI"
    elif is_remote(ref):
        raw, name = fetch_remote(ref), ref[:100]
    elif isinstance(ref, str) and ref:
        path = resolve_path(ref, base)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read image {path}: {err.strerror or err}") from None
        name = str(path)
    else:
        raise ImageError(f"expected an image path, a data URI or image bytes, got {type(ref).__name__}")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{name}: {image.width}x{image.height} pixels is more than {MAX_PIXELS:,}; resize it")
            return image.convert("RGB")  # decodes the whole image: a truncated file fails here
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (not an image format Pillow knows, or a corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: not a readable image ({err})") from None


def image_problem(ref: Any, base: Path | None = None) -> str | None:
    """Why `ref` cannot be used as an image (the ImageError's message), or None when it opens."""
    try:
        open_image(ref, base)
    except ImageError as err:
        return str(err)
    return None


def portable(ref: Any, base: Path | None) -> str:
    """A reference that stays valid wherever a row goes next (the tokenize cache, a collator, a JSONL of answers):
    paths absolute, bytes and PIL images as PNG data URIs; data URIs and remote URLs as given."""
    if ref is None or ref == "":
        raise ImageError("image part without an image (give image_url.url, image, url or path)")
    if is_data_uri(ref) or is_remote(ref):
        return ref
    if isinstance(ref, str):
        return str(resolve_path(ref, base).resolve())
    if isinstance(ref, dict) and ref.get("bytes"):
        return as_data_uri(ref["bytes"])
    if isinstance(ref, dict) and ref.get("path"):
        return portable(ref["path"], base)
    if isinstance(ref, (bytes, bytearray)):
        return as_data_uri(bytes(ref))
    image = open_image(ref)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return as_data_uri(buffer.getvalue())
