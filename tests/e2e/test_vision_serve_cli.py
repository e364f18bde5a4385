"""A vision-language model through the console scripts: `tunesmith infer --image` (chat) and image rows (batch), and
`tunesmith deploy` answering OpenAI image_url parts (data URI, a file under --image-root, a URL from an allowed host
on 127.0.0.1) through the official openai SDK with the same greedy text; images over --image-max-bytes and hosts at
loopback addresses refused with a 400 naming the part, the server answering on. The tiny Qwen2-VL's weights are
redrawn wide (std 0.5) so that its greedy answers depend on the picture. The refusals of the image policy itself
(remote off by default, private addresses, redirects, the time limit): tests/serve/test_images.py."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from e2e_cli import run_cli, running
from vision.tiny_vlm import BUILDERS, make_image

MAX_TOKENS = 8
QUESTION = "Which colour is this?"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    import torch
    from transformers import AutoModelForImageTextToText

    folder = BUILDERS["qwen2-vl"](tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image(root / "red.png", (220, 30, 30), (56, 42))
    make_image(root / "blue.png", (20, 40, 230), (42, 56))
    import random

    from PIL import Image

    noise = random.Random(0).randbytes(120 * 110 * 3)  # incompressible: a PNG well over the server's limit
    Image.frombytes("RGB", (120, 110), noise).save(root / "big.png")
    assert (root / "big.png").stat().st_size > 30_000
    return root


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def infer_answers(vlm, images, tmp_path_factory):
    """The chat's answer to the red picture, and the batch answers to red and blue rows, before the server starts."""
    chat = run_cli("infer", "--model", vlm, "--image", images / "red.png", "--max-tokens", MAX_TOKENS,
                   "--temperature", 0, "--device", "cpu", "--dtype", "float32", stdin=QUESTION + "\n")
    folder = tmp_path_factory.mktemp("batch")
    (folder / "red.png").write_bytes((images / "red.png").read_bytes())
    rows = [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"}], "images": ["red.png"]},
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(
                images / "blue.png")}}, {"type": "text", "text": QUESTION}]}]}]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli("infer", "--model", vlm, "--dataset", folder / "rows.jsonl", "--output", folder / "out.jsonl",
            "--max-tokens", MAX_TOKENS, "--temperature", 0, "--device", "cpu", "--dtype", "float32")
    batch = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    return {"chat": chat.stdout[:-1], "red": batch[0]["response"], "blue": batch[1]["response"]}


class Pictures(BaseHTTPRequestHandler):
    root = None

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.end_headers()
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def picture_host(images):
    handler = type("Handler", (Pictures,), {"root": images})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def server(vlm, images, infer_answers, tmp_path_factory):
    with running("--model", vlm, "--image-root", images, "--allow-remote-images", "--remote-image-hosts", "127.0.0.1",
               "--image-max-bytes", 20_000, "--max-tokens-limit", 64, "--device", "cpu", "--dtype", "float32",
               log=tmp_path_factory.mktemp("deploy") / "deploy.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def ask(client, url, **kw):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return client.chat.completions.create(model="tiny-qwen2-vl", messages=[{"role": "user", "content": content}],
                                          max_tokens=MAX_TOKENS, temperature=0, **kw)


def test_infer_chat_and_batch_give_one_greedy_answer_that_depends_on_the_picture(infer_answers):
    assert infer_answers["chat"] == infer_answers["red"] and infer_answers["red"]
    assert infer_answers["blue"] != infer_answers["red"]


def test_deploy_answers_a_data_uri_as_infer_does_whole_and_streamed(server, client, images, infer_answers):
    assert (f"images (tiny-qwen2-vl): data: URIs, files under {images}, http(s) URLs from public hosts and 127.0.0.1; "
            "up to 20,000 bytes each") in server.output()
    reply = ask(client, data_uri(images / "red.png"))
    assert reply.choices[0].message.content == infer_answers["red"]
    assert reply.usage.completion_tokens == MAX_TOKENS and reply.usage.prompt_tokens > 20  # the image's tokens
    assert ask(client, data_uri(images / "blue.png")).choices[0].message.content == infer_answers["blue"]
    chunks = list(ask(client, data_uri(images / "red.png"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == infer_answers["red"]


def test_a_file_under_the_image_root_and_nothing_outside_it(client, images, infer_answers):
    import openai

    assert ask(client, "red.png").choices[0].message.content == infer_answers["red"]
    assert ask(client, f"file://{images}/red.png").choices[0].message.content == infer_answers["red"]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "/etc/hostname")
    assert err.value.body["param"] == "messages[0].content[0].image_url" and "--image-root" in err.value.message


def test_an_allowed_host_within_the_size_limit_and_loopback_refused(client, picture_host, infer_answers):
    import openai

    url = f"http://127.0.0.1:{picture_host}"
    assert ask(client, f"{url}/red.png").choices[0].message.content == infer_answers["red"]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, f"{url}/big.png")
    assert "--image-max-bytes" in err.value.message and err.value.body["param"].endswith("image_url")
    with pytest.raises(openai.BadRequestError) as err:  # localhost is not the allowed 127.0.0.1
        ask(client, f"http://localhost:{picture_host}/red.png")
    assert "loopback" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "data:image/png;base64,AAAA")
    assert "not an image" in err.value.message
    assert ask(client, f"{url}/red.png").choices[0].message.content == infer_answers["red"]  # serving on


def test_eval_scores_vlm_answers_locally_and_from_the_endpoint_alike(client, vlm, images, infer_answers, tmp_path):
    """The reference is the greedy answer to each row's picture: right for red and blue, wrong where the pictures
    are swapped. The local model and the deploy (image parts sent as data URIs) score the same."""
    (tmp_path / "red.png").write_bytes((images / "red.png").read_bytes())
    (tmp_path / "blue.png").write_bytes((images / "blue.png").read_bytes())
    rows = [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                          {"role": "assistant", "content": infer_answers[picture]}], "images": [f"{shown}.png"]}
            for picture, shown in (("red", "red"), ("blue", "blue"), ("red", "blue"))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli("eval", "--model", vlm, "--compare", f"served={str(client.base_url).rstrip('/')}#tiny-qwen2-vl",
            "--dataset", tmp_path / "rows.jsonl", "--metrics", "exact_match", "--max-tokens", MAX_TOKENS,
            "--temperature", 0, "--device", "cpu", "--dtype", "float32", "--output-dir", tmp_path / "eval")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    scores = {name: m["scores"]["exact_match"] for name, m in results["models"].items()}
    assert scores == {"tiny-qwen2-vl": pytest.approx(2 / 3), "served": pytest.approx(2 / 3)}


def test_the_anthropic_sdk_sends_an_image_block_and_gets_the_same_answer(client, images, infer_answers):
    import anthropic

    sdk = anthropic.Anthropic(base_url=str(client.base_url).rstrip("/").removesuffix("/v1"), api_key="none",
                              max_retries=0)
    data = base64.b64encode((images / "red.png").read_bytes()).decode()
    reply = sdk.messages.create(model="tiny-qwen2-vl", max_tokens=MAX_TOKENS, messages=[{  # greedy: the default
        "role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                   "data": data}},
                                    {"type": "text", "text": QUESTION}]}])
    assert reply.content[0].text == infer_answers["red"] and reply.stop_reason == "max_tokens"


def test_a_vlm_served_as_a_version_reads_images(vlm, images, infer_answers):
    """deploy --model-config (and the admin API's loads) go through add_model: a VLM version keeps its processor."""
    import asyncio

    from PIL import Image

    from tunesmith.infer import GenerationRequest, SamplingParams
    from tunesmith.infer.transformers_engine import TransformersEngine

    engine = TransformersEngine.load(versions={"charts:v1": (str(vlm), None)}, device="cpu", dtype="float32")
    assert engine.accepts_images("charts:v1")
    request = GenerationRequest(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": QUESTION}]}],
                                images=[Image.open(images / "red.png").convert("RGB")], model="charts:v1",
                                params=SamplingParams(max_tokens=MAX_TOKENS))
    assert asyncio.run(engine.generate(request)).choices[0].text == infer_answers["red"]


def test_infer_image_refuses_a_text_model_and_a_missing_file_before_loading(vlm, tiny_model, images):
    text = run_cli("infer", "--model", tiny_model, "--image", images / "red.png", stdin="hi\n", check=False)
    assert text.returncode != 0 and "is no vision-language model" in text.stderr and "Traceback" not in text.stderr
    missing = run_cli("infer", "--model", vlm, "--image", images / "nope.png", stdin="hi\n", check=False)
    assert missing.returncode != 0 and "nope.png" in missing.stderr and "Traceback" not in missing.stderr
