"""val_split holds out conversations, not samples: with a template that rewrites past turns (Qwen3 drops earlier
reasoning), a conversation trains as one sample per assistant turn, and none of them may land on the other side."""

import json
from collections import Counter

import pytest
from real_tokenizers import family_tokenizer

from tunesmith.config import SFTConfig
from tunesmith.errors import ConfigError
from tunesmith.models.families import FAMILIES
from tunesmith.templates import Template
from tunesmith.train.sft import sft_data


def conversation(k: int) -> dict:
    """Three answers with reasoning in two: Qwen3 renders it as three samples, each naming conversation k."""
    return {"messages": [
        {"role": "user", "content": f"conv{k} first?"}, {"role": "assistant", "content": "<think>a</think>One."},
        {"role": "user", "content": f"conv{k} second?"}, {"role": "assistant", "content": "<think>b</think>Two."},
        {"role": "user", "content": f"conv{k} third?"}, {"role": "assistant", "content": "Three."}]}


def conversations_in(ds, tok) -> Counter:
    return Counter(next(w for w in tok.decode(ids).split() if w.startswith("conv")) for ids in ds["input_ids"])


def test_one_conversations_turns_stay_on_one_side_of_the_split(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(conversation(k)) + "\n" for k in range(10)), encoding="utf-8")
    template = Template(family_tokenizer(FAMILIES["qwen3"]))
    cfg = SFTConfig(model="unused", dataset=[str(data)], val_split=0.3, max_length=512)
    data = sft_data(cfg, template)
    train, held, skipped = data.train, data.eval, data.skipped
    train_convs, held_convs = conversations_in(train, template.tokenizer), conversations_in(held, template.tokenizer)
    assert len(held_convs) == 3 and len(train_convs) == 7 and skipped == 0  # ceil(0.3 x 10) conversations held out
    assert not set(train_convs) & set(held_convs)
    assert set(train_convs.values()) == set(held_convs.values()) == {3}  # every turn of each, as its own sample
    again = sft_data(cfg, template).train
    assert conversations_in(again, template.tokenizer) == train_convs  # the seed draws the same rows


def test_a_split_that_leaves_nothing_to_train_on_says_so(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(conversation(0)) + "\n", encoding="utf-8")
    cfg = SFTConfig(model="unused", dataset=[str(data)], val_split=0.1, max_length=512)
    with pytest.raises(ConfigError, match="val_split: 0.1 of 1 rows leaves none to train on"):
        sft_data(cfg, Template(family_tokenizer(FAMILIES["qwen3"])))
