"""`tunesmith deploy --speculative ngram:4` through the console script and the openai client: prompt lookup inside
the continuous batch; greedy answers, streamed and not, equal the continuous batch's without speculation (in
process, same model), and /metrics counts verification steps, proposed and accepted tokens. The engine-level proofs
(runs accepted and rejected, stop strings and max_tokens inside a run, a sampling request beside, prefix caching,
a draft model through assisted generate(), a vocabulary mismatch) are in tests/infer/test_speculative*.py."""

import re

import pytest

from e2e_cli import request, run_cli, running
from tiny import make_tiny_model, untie_head

CHAT = [{"role": "user", "content": "red red red red"}]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """The tiny model with its head = embeddings + noise: its greedy answer falls into runs of one repeated token
    (' ... regenerate regenerate regenerate'), which prompt lookup proposes and the model accepts."""
    return untie_head(make_tiny_model(tmp_path_factory.mktemp("speculative") / "target"), std=0.07, echo=True)


def test_deploy_speculative_answers_greedy_as_without_it_streamed_and_not(target, tmp_path):
    from openai import OpenAI

    from tunesmith.infer import SamplingParams, load_engine

    engine = load_engine("transformers", model=str(target), device="cpu", dtype="float32")
    try:
        answer = engine.chat([CHAT], SamplingParams(max_tokens=MAX_TOKENS, temperature=0))[0].choices[0].text
    finally:
        engine.shutdown()
    assert answer
    with running("--model", target, "--speculative", "ngram:4", log=tmp_path / "deploy.log") as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
        whole = client.chat.completions.create(model="target", messages=CHAT, max_tokens=MAX_TOKENS, temperature=0)
        assert whole.choices[0].message.content == answer
        assert whole.usage.completion_tokens == MAX_TOKENS
        chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
            model="target", messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True)
            if c.choices and c.choices[0].delta.content]
        assert "".join(chunks) == answer and len(chunks) > 1
        assert "speculative decoding: ngram:4" in server.output()  # the banner says how requests are served
        assert "engine: the HTTP server's process" in server.output()  # --engine-process unset, no CUDA: in process
        metrics = request(server, "GET", "/metrics")[1]["text"]

        def counted(name: str) -> float:
            found = re.search(rf'^tunesmith_speculative_{name}_total\{{model="target"\}} (\S+)', metrics, re.M)
            assert found, name
            return float(found.group(1))

        steps, proposed, accepted = counted("steps"), counted("proposed_tokens"), counted("accepted_tokens")
        assert steps > 0 and proposed >= accepted > 0  # two answers' runs were proposed and accepted


def test_a_bad_speculative_value_is_refused_before_loading_naming_the_forms():
    proc = run_cli("deploy", "--speculative", "medusa", check=False, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "draft=MODEL, ngram or ngram:N" in proc.stderr
