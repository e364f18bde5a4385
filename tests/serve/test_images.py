"""Images in chat requests (serve/images.py, chat.py): where a server reads them from, its limits, and the answers
a caller gets. The remote cases run against a real HTTP server on 127.0.0.1; the serving cases on a scripted engine
that reads images (the real model: tests/e2e/test_vision_serve_cli.py)."""

import asyncio
import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.errors import APIError
from tunesmith.serve.images import ImagePolicy, ImageRefused, read_image
from tunesmith.serve.protocol import ChatCompletionRequest
from tunesmith.serve.serving import Serving


def png(color=(255, 0, 0), size=(8, 8)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png()
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/chart.png":
            body = PNG
        elif self.path == "/big.png":
            body = png(size=(400, 400)) + b"\0" * 50_000  # no Content-Length below: counted as it arrives
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        elif self.path == "/slow.png":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(20):  # a byte every 0.1 s: each read is quick, the whole is not
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.1)
            except BrokenPipeError:  # the server under test gave up, as it should
                pass
            return
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path != "/big.png":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def refused(url, policy) -> str:
    with pytest.raises(ImageRefused) as err:
        read_image(url, policy)
    return str(err.value)


# -----------------------------------------------------------------------------
# The policy


def test_data_uri_is_read_and_bad_ones_say_why():
    policy = ImagePolicy()
    assert read_image(DATA_URI, policy).size == (8, 8)
    assert "base64" in refused("data:image/png;base64,@@@", policy)
    assert "not an image" in refused("data:image/png;base64," + base64.b64encode(b"hello").decode(), policy)
    assert "text/plain" in refused("data:text/plain;base64,aGk=", policy)
    assert "--image-max-bytes" in refused(DATA_URI, ImagePolicy(max_bytes=20))


def test_local_files_only_under_the_image_root(tmp_path):
    (tmp_path / "root" / "charts").mkdir(parents=True)
    (tmp_path / "root" / "charts" / "a.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "secret.png")
    assert "--image-root" in refused(str(tmp_path / "root" / "charts" / "a.png"), ImagePolicy())
    policy = ImagePolicy(root=(tmp_path / "root").resolve())
    assert read_image("charts/a.png", policy).size == (8, 8)
    assert read_image(f"file://{tmp_path}/root/charts/a.png", policy).size == (8, 8)
    for outside in ("../secret.png", str(tmp_path / "secret.png"), f"file://{tmp_path}/secret.png", "link.png",
                    "file:///etc/passwd"):
        assert "outside the folder" in refused(outside, policy), outside
    assert "no such file" in refused("charts/missing.png", policy)


def test_remote_urls_are_off_by_default(http_url):
    assert "--allow-remote-images" in refused(f"{http_url}/chart.png", ImagePolicy())


def test_private_and_loopback_hosts_stay_refused_with_remote_allowed(http_url):
    policy = ImagePolicy(allow_remote=True)
    assert "loopback" in refused(f"{http_url}/chart.png", policy)
    for url in ("http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png",
                "http://[::ffff:127.0.0.1]/x.png", "http://0.0.0.0/x.png", "http://192.168.1.1/x.png"):
        assert "private, loopback or reserved" in refused(url, policy), url
    assert "not read" in refused("ftp://example.com/x.png", policy)


def test_an_allowed_host_is_fetched_within_its_size_and_time_limits(http_url):
    policy = ImagePolicy(allow_remote=True, remote_hosts=frozenset({"127.0.0.1"}), timeout_s=0.8)
    assert read_image(f"{http_url}/chart.png", policy).size == (8, 8)
    small = ImagePolicy(allow_remote=True, remote_hosts=frozenset({"127.0.0.1"}), max_bytes=len(PNG) - 1)
    assert f"is {len(PNG):,} bytes, over" in refused(f"{http_url}/chart.png", small)  # by its Content-Length
    assert "over 20,000 bytes" in refused(f"{http_url}/big.png", ImagePolicy(
        allow_remote=True, remote_hosts=frozenset({"127.0.0.1"}), max_bytes=20_000))  # counted as it arrives
    start = time.monotonic()
    assert "--image-timeout" in refused(f"{http_url}/slow.png", policy)
    assert time.monotonic() - start < 1.5
    assert "redirects are not followed" in refused(f"{http_url}/redirect", policy)
    assert "HTTP 404" in refused(f"{http_url}/missing.png", policy)


# -----------------------------------------------------------------------------
# Serving: a scripted engine that reads images


class VisionEngine(ScriptedEngine):
    def accepts_images(self, model=None):
        return True

    def prompt_ids(self, request):
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        return list(range(4 + 10 * len(request.images or [])))


def vision_chat(serving, content, **body):
    req = ChatCompletionRequest.model_validate({"model": "prd", "max_tokens": 5, **body,
                                                "messages": [{"role": "user", "content": content}]})
    return asyncio.run(create_chat_completion(serving, req))


def test_image_parts_reach_a_vision_engine_as_pictures_in_order(tmp_path):
    engine = VisionEngine()
    (tmp_path / "blue.png").write_bytes(png((0, 0, 255)))
    serving = Serving(engine, DeployConfig(image_root=str(tmp_path)))
    reply = vision_chat(serving, [{"type": "text", "text": "Compare"},
                                  {"type": "image_url", "image_url": {"url": DATA_URI, "detail": "low"}},
                                  {"type": "image_url", "image_url": {"url": "blue.png"}}])
    assert reply.choices[0].message.content == "Hello there!" and reply.usage.prompt_tokens == 24
    gen = engine.requests[-1]
    assert gen.messages == [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"},
                                                         {"type": "image"}]}]
    assert [im.getpixel((0, 0)) for im in gen.images] == [(255, 0, 0), (0, 0, 255)]


@pytest.mark.parametrize("part, says", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}, "base64"),
    ({"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}, "--allow-remote-images"),
    ({"type": "image_url", "image_url": {"url": "/etc/passwd"}}, "--image-root"),
    ({"type": "image_url", "image_url": "https://example.com/x.png"}, "expected {\"url\""),
    ({"type": "input_audio", "input_audio": {}}, "'input_audio' parts are not supported"),
])
def test_a_bad_image_is_400_naming_its_part_and_the_server_keeps_serving(part, says):
    serving = Serving(VisionEngine(), DeployConfig())
    with pytest.raises(APIError) as err:
        vision_chat(serving, [{"type": "text", "text": "Look"}, part])
    assert err.value.status == 400 and says in err.value.message
    assert err.value.param.startswith("messages[0].content[1]")
    assert serving.active == 0  # no slot held
    assert vision_chat(serving, [{"type": "image_url", "image_url": {"url": DATA_URI}}]).choices[0].message.content


def test_a_text_model_refuses_images_by_name():
    serving = Serving(ScriptedEngine(), DeployConfig())
    with pytest.raises(APIError) as err:
        vision_chat(serving, [{"type": "image_url", "image_url": {"url": DATA_URI}}])
    assert err.value.status == 400 and err.value.param == "messages[0].content"
    assert "'image_url' parts are not supported; this server reads text parts only" in err.value.message


def test_openapi_lists_image_parts_only_where_a_vision_model_is_served():
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import build_app

    def content(engine):
        with TestClient(build_app(engine, DeployConfig())) as client:
            doc = client.get("/openapi.json").json()
        return doc["components"]["schemas"]["UserMessage"]["properties"]["content"]["anyOf"]

    parts = content(VisionEngine())[1]["items"]["anyOf"]
    assert [p["properties"]["type"]["const"] for p in parts] == ["text", "image_url"]
    assert content(ScriptedEngine())[1]["items"]["properties"]["type"] == {"const": "text"}


# -----------------------------------------------------------------------------
# /v1/messages (Anthropic): image blocks for a vision model


def message(serving, content):
    from tunesmith.serve.messages import MessagesRequest, create_message

    req = MessagesRequest.model_validate({"model": "prd", "max_tokens": 5,
                                          "messages": [{"role": "user", "content": content}]})
    return asyncio.run(create_message(serving, req))


def test_anthropic_image_blocks_reach_a_vision_engine_and_bad_ones_are_named(tmp_path):
    engine = VisionEngine()
    (tmp_path / "blue.png").write_bytes(png((0, 0, 255)))
    serving = Serving(engine, DeployConfig(image_root=str(tmp_path)))
    data = base64.b64encode(PNG).decode()
    reply = message(serving, [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                              {"type": "image", "source": {"type": "url", "url": "blue.png"}},
                              {"type": "text", "text": "Compare"}])
    assert reply.content[0].text == "Hello there!"
    gen = engine.requests[-1]
    assert gen.messages == [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                         {"type": "text", "text": "Compare"}]}]
    assert [im.getpixel((0, 0)) for im in gen.images] == [(255, 0, 0), (0, 0, 255)]
    for block, param, says in (
            ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "!!"}},
             "messages[0].content[0].source", "base64"),
            ({"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
             "messages[0].content[0].source", "--allow-remote-images"),
            ({"type": "image"}, "messages[0].content[0].source", "expected"),
            ({"type": "document", "source": {}}, "messages[0].content", "'document' blocks are not supported")):
        with pytest.raises(APIError) as err:
            message(serving, [block, {"type": "text", "text": "Look"}])
        assert err.value.status == 400 and err.value.param == param and says in err.value.message
    with pytest.raises(APIError) as err:  # a text model: refused as before
        message(Serving(ScriptedEngine(), DeployConfig()), [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": data}}])
    assert "'image' blocks are not supported; this server reads text blocks" in err.value.message


def test_the_startup_banner_says_where_images_may_come_from():
    from tunesmith.serve.app import banner

    assert "images" not in banner(DeployConfig(), ["text-model"])
    line = next(x for x in banner(DeployConfig(), ["vlm"], vision=["vlm"]).splitlines() if "images" in x)
    assert "data: URIs, no local files (--image-root), no URLs (--allow-remote-images)" in line
    line = next(x for x in banner(DeployConfig(image_root="/srv/charts", allow_remote_images=True,
                                               remote_image_hosts=["cdn.intranet"]), ["vlm"], vision=["vlm"]
                                  ).splitlines() if "images" in x)
    assert "files under /srv/charts, http(s) URLs from public hosts and cdn.intranet" in line


def test_more_images_than_the_server_takes_are_refused_before_any_is_read():
    serving = Serving(VisionEngine(), DeployConfig(max_images=1))
    picture = {"type": "image_url", "image_url": {"url": "https://example.com/never-fetched.png"}}
    with pytest.raises(APIError) as err:
        vision_chat(serving, [picture, picture])
    assert err.value.status == 400 and err.value.param == "messages" and "--max-images" in err.value.message
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/never-fetched.png"}}
    with pytest.raises(APIError) as err:
        message(serving, [block, block])
    assert err.value.param == "messages" and "--max-images" in err.value.message
