"""Qwen3's enable_thinking through the real server: a tiny random Qwen3 with the real Qwen BPE and Qwen3's own
template, served by the transformers engine behind the FastAPI app, asked over HTTP. The request's
chat_template_kwargs (as vLLM takes them) go over `deploy --chat-template-kwargs`, which goes over the template's
default: thinking off renders the empty think block into the prompt, so the prompt is exactly those tokens longer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from real_tokenizers import family_tokenizer

from tunesmith.config import DeployConfig
from tunesmith.models.families import FAMILIES

USER = [{"role": "user", "content": "say hello"}]
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = family_tokenizer(FAMILIES["qwen3"])
    config = AutoConfig.for_model("qwen3", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  max_position_embeddings=1024, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, len(tokenizer(EMPTY_THINK, add_special_tokens=False)["input_ids"])


def prompt_tokens(client, **extra) -> int:
    reply = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1, "temperature": 0, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("deploy_kwargs", [{}, {"enable_thinking": False}])
def test_request_kwargs_over_the_deploys_over_the_templates(qwen3_folder, deploy_kwargs):
    from tunesmith.infer import load_engine
    from tunesmith.serve.app import build_app

    folder, think_block = qwen3_folder
    engine = load_engine("transformers", model=str(folder), device="cpu", dtype="float32",
                         chat_template_kwargs=deploy_kwargs)
    with TestClient(build_app(engine, DeployConfig(chat_template_kwargs=deploy_kwargs))) as client:
        default = prompt_tokens(client)
        on = prompt_tokens(client, chat_template_kwargs={"enable_thinking": True})
        off = prompt_tokens(client, chat_template_kwargs={"enable_thinking": False})
        assert off == on + think_block  # thinking off: the prompt closes an empty think block
        assert default == (off if deploy_kwargs else on)  # the deploy's default, else the template's (thinking on)
        bad = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1,
                                                        "chat_template_kwargs": {"add_generation_prompt": False}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "chat_template_kwargs"
