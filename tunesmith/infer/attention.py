"""A varlen attention for continuous batching when the flash-attn package is not installed.

transformers' continuous batching runs fastest with a flash attention: it then needs no attention mask, so it can
capture each batch shape once as a CUDA graph and double-buffer its inputs. Without flash-attn it falls back to SDPA
over one flattened sequence with a dense block mask padded to 16k keys: on an H100 that made a 0.5B model spend
~10 ms per decode step in attention at batch 1 (bench/engine_decode.py, docs/benchmarks.md).

PyTorch ships a varlen flash kernel of its own (`torch.nn.attention.varlen.varlen_attn`). We register it under a
name containing "flash", which is how transformers recognises a flash implementation, and call it exactly as its
flash path calls flash-attn: cache update, then one varlen call with cumulative sequence lengths, causal with the
queries aligned to the end of their keys. `reference_varlen` is the same computation one sequence at a time with
SDPA; tests compare the two, and CPU runs (no varlen kernel) use it so the plumbing is exercised in CI.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

NAME = "flash_tunesmith_varlen"  # must contain "flash": transformers keys its mask-free path on that word


def torch_varlen_available(dtype: Any) -> bool:
    """True when this torch has the varlen kernel and the model runs in half precision on CUDA, the only case the
    kernel covers."""
    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and dtype in (torch.bfloat16, torch.float16)


@lru_cache(maxsize=None)
def _causal_options(sliding_window: int | None) -> dict[str, Any]:
    """Causal masking, queries aligned to the end of their keys. torch 2.11's varlen_attn has no `is_causal` and
    takes flash-attn's window (left, right): right 0 is causal; later versions have `is_causal`."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    left = -1 if sliding_window is None else sliding_window - 1
    if "is_causal" in inspect.signature(varlen_attn).parameters:
        return {"is_causal": True} if sliding_window is None else {"is_causal": True, "window_size": (left, 0)}
    return {"window_size": (left, 0)}


def reference_varlen(q, k, v, cu_q, cu_k, scale: float | None, window: int | None = None):
    """Per-sequence causal SDPA, queries aligned to the end of their keys (decode = last positions). Shapes:
    q (total_q, H, D), k/v (total_k, H_kv, D) -> (total_q, H, D)."""
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[i], starts_q[i + 1], starts_k[i], starts_k[i + 1]
        if q1 == q0:
            continue
        qi, ki, vi = (t.transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
        offset = (k1 - k0) - (q1 - q0)
        rows = torch.arange(q1 - q0, device=q.device)[:, None] + offset
        cols = torch.arange(k1 - k0, device=q.device)[None, :]
        allowed = cols <= rows
        if window is not None:
            allowed &= cols > rows - window
        out[q0:q1] = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=allowed, scale=scale,
                                                    enable_gqa=ki.shape[0] != qi.shape[0]).transpose(0, 1)
    return out


def _varlen_forward(module: Any, query, key, value, attention_mask, scaling: float | None = None,
                    sliding_window: int | None = None, cache: Any = None, **kwargs) -> tuple[Any, None]:
    """The attention call transformers makes per layer: query/key/value (1, heads, tokens, head_dim)."""
    if cache is None:  # plain generate() on the same model (the engine's exact path): SDPA, as loaded
        return _sdpa_fallback(module, query, key, value, attention_mask, scaling, **kwargs)
    # Continuous batching: write this step's keys, read every sequence's keys back
    key, value = cache.update(key_states=key, value_states=value, layer_idx=module.layer_idx, kwargs=kwargs)
    q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))
    cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, cu_q.to(dtype=_int32()), cu_k.to(dtype=_int32()), int(kwargs["max_length_q"]),
                          int(kwargs["max_length_k"]), scale=scaling, **_causal_options(sliding_window))
    else:
        out = reference_varlen(q, k, v, cu_q, cu_k, scaling, sliding_window)
    return out.unsqueeze(0), None


def _sdpa_fallback(module: Any, query, key, value, attention_mask, scaling, **kwargs) -> tuple[Any, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:  # a flash-style padding mask: one unpadded sequence is all this path serves
        raise NotImplementedError(f"{NAME}: padded batches outside continuous batching")
    return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, **kwargs)


def _int32():
    import torch

    return torch.int32


def use_varlen(model: Any) -> None:
    """Register the varlen attention with transformers (idempotent) and switch the model to it. The config is set
    directly: `set_attn_implementation` would try to load a flash-attn kernel from the hub for any name that
    contains "flash"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, _varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    model.config._attn_implementation = NAME
