"""S2-Attn (models/s2_attention.py), LongLoRA's training attention: full causal attention when one group covers the
sequence; with smaller groups each token attends exactly within its group (half the heads in groups shifted by half a
group), never outside it nor to a later token or a padded one; full attention in eval mode; registered with
transformers' AttentionInterface and used by a real model."""

from types import SimpleNamespace

import pytest
import torch
from tiny import make_tiny_model
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tunesmith.models.s2_attention import NAME, s2_attention_forward, use_s2_attention

BATCH, HEADS, KV_HEADS, LENGTH, DIM = 2, 4, 2, 16, 8


def module(ratio, training=True):
    return SimpleNamespace(training=training, s2_group_size_ratio=ratio, is_causal=True,
                           num_key_value_groups=HEADS // KV_HEADS)


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, HEADS, LENGTH, DIM, generator=g), torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=g),
            torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=g))


def padding_mask(pad):
    """sdpa's boolean mask: causal, and the first `pad` tokens of the second row are left padding."""
    keep = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    keep[1, :pad] = False
    return torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]


@pytest.mark.parametrize("pad", [0, 5])
def test_one_group_over_the_whole_sequence_is_full_attention(pad):
    q, k, v = qkv()
    mask = padding_mask(pad) if pad else None
    s2, _ = s2_attention_forward(module(1.0), q, k, v, mask)
    full, _ = sdpa_attention_forward(module(1.0, training=False), q, k, v, mask)
    assert torch.allclose(s2[1, pad:], full[1, pad:], atol=1e-6) and torch.allclose(s2[0], full[0], atol=1e-6)


def attended(ratio, mask=None):
    """Which key positions each (head, query) output depends on: a value changed at one position at a time."""
    q, k, v = qkv()
    base, _ = s2_attention_forward(module(ratio), q, k, v, mask)
    seen = torch.zeros(BATCH, HEADS, LENGTH, LENGTH, dtype=torch.bool)
    for j in range(LENGTH):
        moved = v.clone()
        moved[:, :, j] += 1.0
        out, _ = s2_attention_forward(module(ratio), q, k, moved, mask)
        seen[..., j] = ((out - base).abs().amax(-1) > 1e-6).transpose(1, 2)  # (batch, heads, queries)
    return seen


def expected(group, shift, keep=None):
    i = torch.arange(LENGTH)
    same = ((i[:, None] + shift) // group) == ((i[None, :] + shift) // group)
    allowed = same & (i[None, :] <= i[:, None])
    return allowed if keep is None else allowed & keep[None, :]


def test_smaller_groups_attend_only_within_their_shifted_group():
    seen = attended(0.25)  # groups of 4 tokens; heads 2 and 3 in groups shifted by 2
    for head in range(HEADS):
        shift = 2 if head >= HEADS // 2 else 0
        assert torch.equal(seen[0, head], expected(4, shift)), f"head {head}"
    # every token sees some earlier group's tokens through the shifted heads, none beyond its own groups
    assert not seen[0, 0, 4, :4].any() and seen[0, 2, 4, 2:4].all()


def test_padding_is_never_attended_inside_the_groups():
    keep = torch.ones(LENGTH, dtype=torch.bool)
    keep[:5] = False
    seen = attended(0.25, padding_mask(5))
    for head in range(HEADS):
        shift = 2 if head >= HEADS // 2 else 0
        real = expected(4, shift, keep)
        assert torch.equal(seen[1, head, 5:], real[5:]), f"head {head}"  # padded queries' outputs are ignored
        assert torch.equal(seen[0, head], expected(4, shift))


def test_a_model_trains_with_s2_and_evaluates_with_full_attention(tmp_path):
    folder = make_tiny_model(tmp_path / "tiny")
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    full = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    assert use_s2_attention(model, 0.25) == NAME and model.config._attn_implementation == NAME
    with torch.no_grad():
        model.eval()
        full.eval()
        assert torch.allclose(model(ids, attention_mask=mask).logits, full(ids, attention_mask=mask).logits, atol=1e-5)
        model.train()  # dropout is 0 in the tiny config: only the attention pattern differs
        grouped = model(ids, attention_mask=mask).logits
        assert not torch.allclose(grouped[:, 8:], full(ids, attention_mask=mask).logits[:, 8:], atol=1e-3)
        reference = full(ids, attention_mask=mask).logits
        assert torch.allclose(grouped[0, :3], reference[0, :3], atol=1e-5)  # groups of 6, shifted ones start at 3
        use_s2_attention(model, 1.0)
        one_group = model(ids, attention_mask=mask).logits
        assert torch.allclose(one_group[0], reference[0], atol=1e-5)
        assert torch.allclose(one_group[1, 7:], reference[1, 7:], atol=1e-5)


def test_attention_beyond_plain_softmax_is_refused():
    from transformers import Gemma2Config

    from tunesmith.errors import ConfigError

    gemma2 = AutoModelForCausalLM.from_config(Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=64,
                                                           num_hidden_layers=1, num_attention_heads=2,
                                                           num_key_value_heads=1, head_dim=32))
    with pytest.raises(ConfigError, match="gemma2 also uses attn_logit_softcapping"):
        use_s2_attention(gemma2, 0.25)
