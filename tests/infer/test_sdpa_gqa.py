"""Generation on CPU (infer, deploy, eval) lets SDPA read the KV heads as they are (infer/attention.py,
kv_heads_in_sdpa): the attention output must be bitwise what transformers' repeat_kv path gives, so greedy answers do
not change."""

from __future__ import annotations

import os

import pytest
import torch

from tunesmith.infer.attention import GQA_SWITCH, kv_heads_in_sdpa


def _masked_attention(query, key, value, mask):
    """transformers' SDPA attention as a grouped-query layer calls it, with the continuous batch's block mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = torch.nn.Module()
    layer.num_key_value_groups = query.shape[1] // key.shape[1]
    layer.is_causal = True
    out, _ = sdpa_attention_forward(layer, query, key, value, attention_mask=mask, scaling=0.125)
    return out


@pytest.fixture
def no_switch(monkeypatch):
    monkeypatch.delenv(GQA_SWITCH, raising=False)


def test_grouped_heads_give_the_same_attention_bitwise(no_switch):
    from transformers.integrations import sdpa_attention

    torch.manual_seed(0)
    query = torch.randn(1, 9, 12, 64)  # 12 decode tokens of a batch over 3 KV heads, as SmolLM2's layers have
    key, value = torch.randn(1, 3, 600, 64), torch.randn(1, 3, 600, 64)
    mask = torch.rand(1, 1, 12, 600) > 0.5
    mask[..., 0] = True
    copies = _masked_attention(query, key, value, mask)
    with kv_heads_in_sdpa("cpu"):
        assert sdpa_attention.use_gqa_in_sdpa(mask, key, value)  # the switch reaches transformers: no repeat_kv
        grouped = _masked_attention(query, key, value, mask)
    assert torch.equal(grouped, copies)


def test_the_switch_is_restored_and_a_users_value_kept(no_switch, monkeypatch):
    with kv_heads_in_sdpa("cpu"):
        assert os.environ[GQA_SWITCH] == "1"
    assert GQA_SWITCH not in os.environ  # a later training run in the same process keeps transformers' default
    with kv_heads_in_sdpa("cuda"):  # a mask with enable_gqa sends CUDA to the math kernel: left alone
        assert GQA_SWITCH not in os.environ
    monkeypatch.setenv(GQA_SWITCH, "0")
    with kv_heads_in_sdpa("cpu"):
        assert os.environ[GQA_SWITCH] == "0"
