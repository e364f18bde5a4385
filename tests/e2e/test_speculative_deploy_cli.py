"""`tunesmith deploy --speculative draft=MODEL` through the console script and the openai client: greedy answers,
streamed and not, equal the continuous batch's without speculation (in process, same model). The engine-level
proofs (accepted proposals, prompt lookup, a vocabulary mismatch) are in tests/infer/test_speculative.py."""

import re

import pytest

from e2e_cli import request, run_cli, running
from tiny import make_tiny_model, untie_head

CHAT = [{"role": "user", "content": "code for apple"}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The tiny model with its head untied (greedy answers vary instead of repeating the last token), and a draft of
    it: its first layer of two, same tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("speculative")
    target = untie_head(make_tiny_model(root / "target"))
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    del model.model.layers[1]
    model.config.num_hidden_layers = 1
    model.save_pretrained(root / "draft")
    AutoTokenizer.from_pretrained(target).save_pretrained(root / "draft")
    return target, root / "draft"


def test_deploy_speculative_answers_greedy_as_without_it_streamed_and_not(pair, tmp_path):
    from openai import OpenAI

    from tunesmith.infer import SamplingParams, load_engine

    target, draft = pair
    engine = load_engine("transformers", model=str(target), device="cpu", dtype="float32")
    try:
        answer = engine.chat([CHAT], SamplingParams(max_tokens=MAX_TOKENS, temperature=0))[0].choices[0].text
    finally:
        engine.shutdown()
    assert answer
    with running("--model", target, "--speculative", f"draft={draft}", log=tmp_path / "deploy.log") as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        whole = client.chat.completions.create(model="target", messages=CHAT, max_tokens=MAX_TOKENS, temperature=0)
        assert whole.choices[0].message.content == answer
        chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
            model="target", messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True)
            if c.choices and c.choices[0].delta.content]
        assert "".join(chunks) == answer and len(chunks) > 1
        assert "speculative" in server.output().lower()  # the banner says how requests are served
        metrics = request(server, "GET", "/metrics")[1]["text"]
        steps = re.search(r'^tunesmith_speculative_steps_total\{model="target"\} (\S+)', metrics, re.M)
        assert steps and float(steps.group(1)) > 0  # two answers' verification steps
        assert 'tunesmith_speculative_accepted_tokens_total{model="target"}' in metrics


def test_a_bad_speculative_value_is_refused_before_loading_naming_the_forms():
    proc = run_cli("deploy", "--speculative", "medusa", check=False, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "draft=MODEL, ngram or ngram:N" in proc.stderr
