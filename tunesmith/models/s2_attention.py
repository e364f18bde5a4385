"""Shifted sparse attention (S2-Attn, LongLoRA: Chen et al. 2024) as an attention function registered with
transformers' AttentionInterface, for training only: in train mode the sequence is cut into groups of
`group_size_ratio` x its length and each token attends causally within its group; half the heads use groups shifted
by half a group, so information flows between neighbouring groups. In eval mode (and at inference, where the saved
model names sdpa) it is full attention: LongLoRA fine-tunes with S2-Attn and serves with full attention.

    use_s2_attention(model, group_size_ratio=0.25)    # registers "s2_attention" and switches the model to it

The shifted heads' groups start half a group early (the first group is half long) instead of rolling the sequence
around as LongLoRA's reference code does, so no token ever sees a later one (the rolled last group mixes the end of
the sequence into its start). A sequence no longer than one group is plain causal attention. The padding or packed-
sample mask that transformers builds (sdpa's boolean mask, registered under the same name) is kept inside each group.
"""

from __future__ import annotations

import math
from typing import Any

NAME = "s2_attention"
RATIO_ATTRIBUTE = "s2_group_size_ratio"  # set on each attention module by use_s2_attention


def group_size(length: int, ratio: float) -> int:
    return max(1, math.ceil(length * ratio))


def s2_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                         scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention signature: query (batch, heads, length, dim), key/value (batch, kv heads, length, dim),
    attention_mask None (causal) or boolean (batch, 1, length, length); returns (batch, length, heads, dim)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:  # use_s2_attention refuses such models
        raise ValueError("s2_attention computes plain softmax attention (no soft-capping, no sinks)")
    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    heads, length = query.shape[1], query.shape[2]
    if key.shape[2] != length:
        raise ValueError("s2_attention trains on whole sequences (no cache); full attention is used in eval mode")
    key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    group = group_size(length, getattr(module, RATIO_ATTRIBUTE, 0.25))
    half = heads // 2
    shift = group // 2 if group < length else 0  # one group: plain causal attention on every head
    parts = [grouped_attention(query[:, :half], key[:, :half], value[:, :half], attention_mask, group, 0, dropout,
                               scaling),
             grouped_attention(query[:, half:], key[:, half:], value[:, half:], attention_mask, group, shift,
                               dropout, scaling)]
    return torch.cat(parts, dim=1).transpose(1, 2).contiguous(), None


def grouped_attention(query: Any, key: Any, value: Any, mask: Any, group: int, shift: int, dropout: float,
                      scaling: float | None) -> Any:
    """Causal attention within groups of `group` tokens whose first group holds `group - shift` tokens: the sequence
    is padded by `shift` in front (and to a whole number of groups at the end), folded into (batch x groups) short
    sequences, and unfolded again. Returns (batch, heads, length, dim)."""
    import torch
    import torch.nn.functional as F

    batch, heads, length, dim = query.shape
    total = math.ceil((length + shift) / group) * group
    pad = (0, 0, shift, total - length - shift)
    groups = total // group

    def fold(x: Any) -> Any:
        return F.pad(x, pad).view(batch, heads, groups, group, dim).transpose(1, 2).reshape(-1, heads, group, dim)

    real = torch.zeros(total, dtype=torch.bool, device=query.device)
    real[shift:shift + length] = True
    causal = torch.ones(group, group, dtype=torch.bool, device=query.device).tril()
    if mask is None:
        allowed = causal & real.view(groups, 1, 1, group)  # (groups, 1, q, k): padded keys never attended
        allowed = allowed.repeat(batch, 1, 1, 1)
    else:
        if mask.dtype != torch.bool:
            raise ValueError(f"s2_attention expects a boolean mask (sdpa's), got {mask.dtype}")
        padded = F.pad(mask, (shift, total - length - shift, shift, total - length - shift), value=False)
        m = padded.view(batch, mask.shape[1], groups, group, groups, group)
        blocks = torch.diagonal(m, dim1=2, dim2=4)  # (batch, mask heads, q, k, groups): each group's own block
        allowed = blocks.permute(0, 4, 1, 2, 3).reshape(batch * groups, mask.shape[1], group, group) & causal
    # a row with nothing to attend (a padded position) attends itself: softmax over nothing would be NaN
    allowed = allowed | (~allowed.any(-1, keepdim=True) & torch.eye(group, dtype=torch.bool, device=query.device))
    out = F.scaled_dot_product_attention(fold(query), fold(key), fold(value), attn_mask=allowed, scale=scaling,
                                         dropout_p=dropout)
    out = out.view(batch, groups, heads, group, dim).transpose(1, 2).reshape(batch, heads, total, dim)
    return out[:, :, shift:shift + length]


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, s2_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the padding / packed-sample mask sdpa would get


def use_s2_attention(model: Any, group_size_ratio: float) -> str:
    """Switch `model` (a peft model or a transformers one) to S2-Attn in training; returns the attention's name.
    Attention that is more than softmax(QK)V (Gemma 2's logit soft-capping, gpt-oss's sinks) is refused."""
    from tunesmith.errors import ConfigError
    from tunesmith.models.patches.attention import set_attention

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.config.get_text_config()
    extra = [k for k in ("attn_logit_softcapping",) if getattr(text, k, None)] + \
        [name for name, _ in base.named_parameters() if name.endswith(".sinks")][:1]
    if extra:
        raise ConfigError(f"tuner: longlora's S2-Attn computes plain softmax attention; {text.model_type} also uses "
                          f"{extra[0]} there. Use lora on this model")
    register()
    for module in base.modules():
        if type(module).__name__.endswith("Attention"):
            setattr(module, RATIO_ATTRIBUTE, group_size_ratio)
    set_attention(base, NAME)
    return NAME
