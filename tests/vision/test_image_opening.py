"""Opening images as rows and requests name them: paths relative to the data file, data URIs, PIL images; a missing,
corrupt or remote one is an ImageError that says which and why."""

from __future__ import annotations

import base64

import pytest
from PIL import Image

from tunesmith.data.images import ImageError, image_problem, open_image, portable


def test_open_by_path_data_uri_and_pil(tmp_path, pictures):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(pictures[0].read_bytes())
    by_path = open_image("imgs/a.png", base=tmp_path)
    uri = "data:image/png;base64," + base64.b64encode(pictures[0].read_bytes()).decode()
    by_uri = open_image(uri)
    assert by_path.size == by_uri.size == (56, 42) and by_path.mode == "RGB"
    assert by_path.getpixel((0, 0)) == by_uri.getpixel((0, 0)) == (220, 30, 30)
    assert open_image(Image.new("L", (3, 3))).mode == "RGB"
    assert portable("imgs/a.png", tmp_path) == str((tmp_path / "imgs" / "a.png").resolve())
    assert open_image(portable(Image.open(pictures[1]), None)).size == (28, 28)


def test_problems_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert "image not found" in image_problem("nope.png", tmp_path)
    assert "not a readable image" in image_problem("broken.png", tmp_path)
    assert "invalid base64" in image_problem("data:image/png;base64,@@@")
    with pytest.raises(ImageError, match="remote image URLs are not fetched"):
        open_image("https://example.com/a.png")
    fetched = []
    image = open_image("https://example.com/a.png", fetch_remote=lambda url: fetched.append(url) or _png())
    assert fetched == ["https://example.com/a.png"] and image.size == (2, 2)


def _png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG")
    return buffer.getvalue()
