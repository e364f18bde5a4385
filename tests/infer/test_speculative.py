"""--speculative on the transformers engine: greedy answers equal the continuous batch's, streamed and not, with a
draft model through assisted generate() (the embedded SmolLM2-135M cut to its first 24 of 30 layers: it agrees with
the full model on about half the tokens, so both accepted and rejected proposals happen) and with prompt lookup
inside the continuous batch (more cases in test_speculative_batch.py); a draft with another vocabulary is refused
naming both models."""

import asyncio

import pytest
from transformers import AutoTokenizer

from tunesmith.config import DeployConfig, InferConfig
from tunesmith.config.load import validate
from tunesmith.errors import ConfigError
from tunesmith.infer import GenerationRequest, SamplingParams, load_engine
from tunesmith.infer.batch import engine_for

PROMPTS = ["Write three lines about rivers, mountains and the sea.",
           "List the days of the week, then list them again backwards."]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def smollm():
    from tunesmith.models.embedded import prepared_folder

    return prepared_folder()


@pytest.fixture(scope="module")
def draft(smollm, tmp_path_factory):
    """SmolLM2-135M's first 24 of 30 layers: the same tokenizer, a cheaper and worse guess of the next token."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm)
    config.num_hidden_layers = 24
    folder = tmp_path_factory.mktemp("draft") / "smollm-24"
    AutoModelForCausalLM.from_pretrained(smollm, config=config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smollm).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def expected(smollm):
    """The greedy answers of the continuous batch, without speculation."""
    engine = load_engine("transformers", model=str(smollm), device="cpu", dtype="float32")
    try:
        return answers(engine)
    finally:
        engine.shutdown()


def answers(engine) -> tuple[list[str], int]:
    """The first prompt's greedy answer in one piece, the second's streamed (its chunks), and the tokens of both."""
    whole = engine.chat([[{"role": "user", "content": PROMPTS[0]}]], GREEDY)[0]

    async def stream():
        request = GenerationRequest(messages=[{"role": "user", "content": PROMPTS[1]}], params=GREEDY)
        return [d async for d in engine.stream(request)]

    deltas = asyncio.run(stream())
    chunks = [d.text for d in deltas if d.text]
    return [whole.choices[0].text, chunks], whole.completion_tokens + deltas[-1].completion_tokens


def counting_forwards(engine) -> list:
    """The served model's forward passes: each verifies one step's proposals."""
    calls: list = []
    engine.served[engine.default].model.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("speculative", ["draft", "ngram:4"])
def test_greedy_answers_are_those_of_the_continuous_batch_streamed_and_not(speculative, smollm, draft, expected):
    if speculative == "draft":
        engine = load_engine("transformers", model=str(smollm), device="cpu", dtype="float32",
                             speculative=f"draft={draft}")
    else:  # as `tunesmith infer --speculative ngram:4` loads it: prompt lookup inside the continuous batch
        engine = engine_for(InferConfig(model=str(smollm), device="cpu", dtype="float32", speculative=speculative))
        assert engine.loops.speculate == 4
    try:
        forwards = counting_forwards(engine)
        (whole, chunks), tokens = answers(engine)
        assert whole == expected[0][0] and "".join(chunks) == "".join(expected[0][1])
        assert len(chunks) > 1  # streamed as it is verified, not at the end
        assert len(forwards) < tokens  # proposals were accepted: fewer passes of the served model than tokens
        steps, accepted, proposed = engine.speculation_counts()[engine.default]  # what /metrics reports
        assert accepted > 0
        if speculative == "draft":  # assisted generate(): one step per forward pass, no count of proposals
            assert steps == len(forwards) and proposed is None
            assert engine.served[engine.default].manager is None  # no continuous batch was started
        else:  # a step: one request's decode step that carried proposals (the others had none to make)
            assert proposed >= accepted and 0 < steps < len(forwards)
            assert engine.served[engine.default].manager is not None
    finally:
        engine.shutdown()


def test_a_draft_with_another_vocabulary_is_refused_naming_both(smollm, draft, tmp_path):
    import shutil

    other = tmp_path / "other-vocab"
    shutil.copytree(draft, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<only-in-the-draft>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError) as err:
        load_engine("transformers", model=str(smollm), device="cpu", dtype="float32", speculative=f"draft={other}")
    message = str(err.value)
    assert f"draft model {other}" in message and "different vocabulary" in message
    assert "<only-in-the-draft>" in message and "served model's tokenizer" in message


def test_a_draft_with_the_same_tokens_and_a_padded_embedding_table_answers_the_same(tmp_path):
    """Qwen2.5 0.5B and 7B share a tokenizer but not the embedding rows (151936 vs 152064): transformers then maps
    the draft's proposals through both tokenizers. A tiny pair padded the same way answers as without a draft."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiny import make_tiny_model, untie_head

    target = untie_head(make_tiny_model(tmp_path / "target"))
    draft = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    draft.resize_token_embeddings(draft.config.vocab_size + 64)
    draft.save_pretrained(tmp_path / "draft")
    AutoTokenizer.from_pretrained(target).save_pretrained(tmp_path / "draft")
    chat = [[{"role": "user", "content": PROMPTS[0]}]]
    plain = load_engine("transformers", model=str(target), device="cpu", dtype="float32")
    try:
        expected = plain.chat(chat, GREEDY)[0].choices[0].text
    finally:
        plain.shutdown()
    engine = load_engine("transformers", model=str(target), device="cpu", dtype="float32",
                         speculative=f"draft={tmp_path / 'draft'}")
    try:
        assert "assistant_tokenizer" in engine.assistant.options(engine.served[engine.default])
        assert engine.chat(chat, GREEDY)[0].choices[0].text == expected
    finally:
        engine.shutdown()


@pytest.mark.parametrize("value, problem", [("ngram:0", "the N of ngram:N is a whole number"),
                                            ("draft=", "draft= needs a model"),
                                            ("medusa", "draft=MODEL, ngram or ngram:N")])
def test_a_bad_value_is_refused_naming_the_forms(value, problem):
    with pytest.raises(ConfigError) as err:
        validate(DeployConfig, {"speculative": value}, source="serve.yaml", lines={"speculative": 3})
    assert f"serve.yaml:3: speculative: {problem}" in str(err.value)
