"""The varlen attention that continuous batching uses when flash-attn is absent (infer/attention.py): the same
answers as SDPA through the engine (CPU, reference path), and PyTorch's varlen kernel equal to the reference on a
GPU, prefill and decode alike."""

from pathlib import Path

import pytest
import torch

from tiny import make_tiny_model
from tunesmith.infer import attention
from tunesmith.infer.transformers_engine import TransformersEngine
from tunesmith.infer.types import SamplingParams

PROMPTS = [[{"role": "user", "content": f"code for {w}, then {i} more words"}]
           for i, w in enumerate(["apple", "river", "stone", "cloud", "maple", "tiger"])]


@pytest.fixture(scope="module")
def spread_model(tmp_path_factory):
    """Random weights with a wide init, so greedy answers vary from token to token (a narrow init repeats one token,
    which would hide attention bugs)."""
    folder = make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(folder)
    return folder


def answers(folder: Path, attention_name: str) -> list[str]:
    engine = TransformersEngine.load(str(folder), attention=attention_name)
    try:
        return [c.choices[0].text for c in engine.chat(PROMPTS, SamplingParams(max_tokens=16))]
    finally:
        engine.shutdown()


def test_continuous_batching_with_varlen_attention_answers_as_sdpa(spread_model):
    sdpa = answers(spread_model, "sdpa")
    assert len(set("".join(sdpa))) > 5, "degenerate answers would not test attention"
    assert answers(spread_model, "varlen") == sdpa


def packed(lengths_q, lengths_k, heads=4, kv_heads=2, dim=64, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(sum(lengths_q), heads, dim, generator=gen).to(device, dtype)
    k = torch.randn(sum(lengths_k), kv_heads, dim, generator=gen).to(device, dtype)
    v = torch.randn(sum(lengths_k), kv_heads, dim, generator=gen).to(device, dtype)
    cu = [torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
          for lengths in (lengths_q, lengths_k)]
    return q, k, v, *cu


def test_reference_sees_only_its_own_sequence_and_the_past():
    q, k, v, cu_q, cu_k = packed([3, 1], [3, 5])
    out = attention.reference_varlen(q, k, v, cu_q, cu_k, scale=None)
    k2, v2 = k.clone(), v.clone()
    k2[3:], v2[3:] = 0, 0  # change the second sequence's keys: the first sequence's output must not move
    again = attention.reference_varlen(q, k2, v2, cu_q, cu_k, scale=None)
    assert torch.equal(out[:3], again[:3]) and not torch.equal(out[3:], again[3:])
    # the first query of a prefill attends to itself only: its output is its own value (per kv head group)
    assert torch.allclose(out[0, 0], v[0, 0], atol=1e-6) and torch.allclose(out[0, 2], v[0, 1], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_varlen_kernel_equals_the_reference_on_gpu():
    from torch.nn.attention.varlen import varlen_attn

    assert attention.torch_varlen_available(torch.bfloat16)
    # a prefill of 7, decodes of 1 token over 40 and 300 keys, a chunk of 5 over 9
    q, k, v, cu_q, cu_k = packed([7, 1, 1, 5], [7, 40, 300, 9], heads=14, kv_heads=2, dtype=torch.bfloat16,
                                 device="cuda")
    got = varlen_attn(q, k, v, cu_q, cu_k, 7, 300, **attention._causal_options(None))
    want = attention.reference_varlen(q.float(), k.float(), v.float(), cu_q, cu_k, scale=None)
    assert (got.float() - want).abs().max().item() < 2e-2


def decode_step(heads=14, kv_heads=2, dtype=torch.float32, device="cpu"):
    """Three decoding sequences over 40, 300 and 9 keys, then two padding rows (their cumulative lengths plateau, as
    the continuous batch pads a step for its CUDA graph)."""
    q, k, v, cu_q, cu_k = packed([1, 1, 1, 0, 0], [40, 300, 9, 0, 0], heads=heads, kv_heads=kv_heads, dtype=dtype,
                                 device=device)
    q = torch.cat([q, torch.randn(2, heads, q.shape[-1], device=device, dtype=dtype)])  # the padding rows' inputs
    return q, k, v, cu_q, cu_k


def test_decode_rows_pack_query_heads_and_answer_as_the_causal_reference():
    q, k, v, cu_q, cu_k = decode_step()
    got = attention._decode_rows(q, k, v, cu_q, cu_k, max_k=300, scale=None)
    want = attention.reference_varlen(q, k, v, cu_q, cu_k, scale=None)
    assert got.shape == q.shape
    assert torch.allclose(got[:3], want[:3], atol=1e-6)
    # each query head reads its own KV head: change KV head 1 and only query heads 7-13 move
    k2 = k.clone()
    k2[:, 1] += 1.0
    moved = attention._decode_rows(q, k2, v, cu_q, cu_k, max_k=300, scale=None)
    assert torch.equal(moved[:3, :7], got[:3, :7]) and not torch.allclose(moved[:3, 7:], got[:3, 7:])


def test_the_batch_packs_heads_on_decode_only_steps(spread_model, monkeypatch):
    """Through the engine: decode-only steps take the packed rows (the answers above equal SDPA's with them)."""
    calls = []
    packed_rows = attention._decode_rows
    monkeypatch.setattr(attention, "_decode_rows", lambda *a, **kw: calls.append(a[0].shape[0]) or packed_rows(*a, **kw))
    answers(spread_model, "varlen")
    assert calls and max(calls) == len(PROMPTS)  # all six sequences decoding together, one query token each


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_rows_equal_the_unpacked_kernel_on_gpu():
    from torch.nn.attention.varlen import varlen_attn

    q, k, v, cu_q, cu_k = decode_step(dtype=torch.bfloat16, device="cuda")
    got = attention._decode_rows(q, k, v, cu_q, cu_k, max_k=300, scale=None)
    unpacked = varlen_attn(q, k, v, cu_q, cu_k, 1, 300, **attention._causal_options(None))
    want = attention.reference_varlen(q.float(), k.float(), v.float(), cu_q, cu_k, scale=None)
    assert (got[:3].float() - want[:3]).abs().max().item() < 2e-2
    assert (got[:3].float() - unpacked[:3].float()).abs().max().item() < 1e-2
