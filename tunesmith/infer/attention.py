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

Training uses the same function for padding-free packing (train/speed.py switches to it when packing is on): TRL's
collator flattens a batch into one row and passes the sample boundaries as `cu_seq_lens_q/k` + `max_length_q/k` (or
only `position_ids` that restart at each sample). One varlen call then keeps the samples apart without any mask,
where SDPA would need a dense block-diagonal mask over the whole flattened batch (32k x 32k for 8 x 4096 tokens) and
lose its flash kernel. The kernel has a backward, so the same call trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from functools import lru_cache
from typing import Any

NAME = "flash_tunesmith_varlen"  # must contain "flash": transformers keys its mask-free path on that word
# A keyword of the model call on a continuous-batching step whose every sequence has one query token (set by
# infer/greedy_steps.py, which also keys the step's CUDA graph on it): the attention then packs query heads as rows.
DECODE_ONLY = "tunesmith_decode_only"
log = logging.getLogger("tunesmith")


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


def reference_varlen(q, k, v, cu_q, cu_k, scale: float | None, window: int | None = None, causal: bool = True):
    """Per-sequence causal SDPA, queries aligned to the end of their keys (decode = last positions); causal=False:
    every query sees every key of its sequence. Shapes: q (total_q, H, D), k/v (total_k, H_kv, D) -> (total_q, H, D)."""
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
        allowed = cols <= rows if causal else torch.ones_like(cols <= rows)
        if window is not None:
            allowed &= cols > rows - window
        out[q0:q1] = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=allowed, scale=scale,
                                                    enable_gqa=ki.shape[0] != qi.shape[0]).transpose(0, 1)
    return out


def _varlen_forward(module: Any, query, key, value, attention_mask, scaling: float | None = None,
                    sliding_window: int | None = None, cache: Any = None, **kwargs) -> tuple[Any, None]:
    """The attention call transformers makes per layer: query/key/value (batch, heads, tokens, head_dim)."""
    if cache is None:
        bounds = _packed_bounds(query, key, attention_mask, kwargs)
        if bounds is None:  # plain generate() on the same model (the engine's exact path): SDPA, as loaded
            return _sdpa_fallback(module, query, key, value, attention_mask, scaling, **kwargs)
        return _packed_attention(query, key, value, bounds, scaling, sliding_window, kwargs.get("dropout", 0.0)), None
    # Continuous batching: write this step's keys, read every sequence's keys back
    key, value = cache.update(key_states=key, value_states=value, layer_idx=module.layer_idx, kwargs=kwargs)
    q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))
    cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    if kwargs.get(DECODE_ONLY) and sliding_window is None and k.shape[1] < q.shape[1]:
        out = _decode_rows(q, k, v, cu_q, cu_k, int(kwargs["max_length_k"]), scaling)
    elif q.is_cuda:
        out = _kernel(q, k, v, cu_q, cu_k, int(kwargs["max_length_q"]), int(kwargs["max_length_k"]), scaling,
                      sliding_window)
    else:
        out = reference_varlen(q, k, v, cu_q, cu_k, scaling, sliding_window)
    return out.unsqueeze(0), None


def _decode_rows(q, k, v, cu_q, cu_k, max_k: int, scale: float | None):
    """A step where every sequence has one query token, with fewer key/value heads than query heads (GQA): the g
    query heads that read one KV head become g rows of that head (flash-decoding's packing). The flash kernel tiles
    queries 128 rows at a time per sequence and head, so one query token per tile left 127 rows idle: with 14 query
    and 2 KV heads (Qwen2.5-0.5B) attention was 44 % of a 64-stream decode step on an H200, 77 us per layer. Packed,
    a tile holds g real rows and there are g times fewer tiles. The g rows are one position, so they take no causal
    mask: a sequence's single query sees all its keys either way (the cache already holds this step's key)."""
    n, heads, dim = q.shape
    kv_heads = k.shape[1]
    g = heads // kv_heads
    # query head h reads KV head h // g (transformers' repeat_kv): heads (kv, j) -> row i * g + j of KV head kv
    rows = q.view(n, kv_heads, g, dim).transpose(1, 2).reshape(n * g, kv_heads, dim)
    cu_rows = cu_q * g  # padding sequences stay empty (their cumulative lengths plateau)
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(rows, k, v, cu_rows.to(dtype=_int32()), cu_k.to(dtype=_int32()), g, max_k, scale=scale)
    else:
        out = reference_varlen(rows, k, v, cu_rows, cu_k, scale, causal=False)
    return out.view(n, g, kv_heads, dim).transpose(1, 2).reshape(n, heads, dim)


def _kernel(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float | None, sliding_window: int | None):
    """PyTorch's varlen flash kernel, causal. Fewer key/value heads than query heads (GQA) go in as they are: the
    flash kernel shares them; torch >= 2.13 wants `enable_gqa=True` said, torch 2.11 has no such keyword."""
    from torch.nn.attention.varlen import varlen_attn

    options = dict(_causal_options(sliding_window))
    if k.shape[1] != q.shape[1]:
        if _has_gqa_keyword():
            options["enable_gqa"] = True
        elif q.requires_grad and not _native_gqa_backward():  # an old kernel without GQA gradients: expand k, v
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    return varlen_attn(q, k, v, cu_q.to(dtype=_int32()), cu_k.to(dtype=_int32()), max_q, max_k, scale=scale,
                       **options)


@lru_cache(maxsize=None)
def _has_gqa_keyword() -> bool:
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return "enable_gqa" in inspect.signature(varlen_attn).parameters


@lru_cache(maxsize=None)
def _native_gqa_backward() -> bool:
    """Whether this torch's varlen backward handles fewer key/value heads itself: checked once on a tiny problem
    against the expanded heads (a failure or a mismatch means we expand them, which costs memory, not correctness).
    `prepare_training` runs it before training: inside a checkpointed layer its own backward would meet the
    checkpoint's saved-tensor hooks."""
    import torch

    from torch.nn.attention.varlen import varlen_attn

    if _has_gqa_keyword():
        return True
    try:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(24, 4, 64, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
        k, v = (torch.randn(24, 2, 64, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
                for _ in range(2))
        cu = torch.tensor([0, 10, 24], device="cuda", dtype=torch.int32)
        options = _causal_options(None)
        with torch.enable_grad(), torch.autocast("cuda", enabled=False):
            varlen_attn(q, k, v, cu, cu, 14, 14, **options).float().square().sum().backward()
            k2, v2 = (t.detach().repeat_interleave(2, dim=1).requires_grad_() for t in (k, v))
            q2 = q.detach().clone().requires_grad_()
            varlen_attn(q2, k2, v2, cu, cu, 14, 14, **options).float().square().sum().backward()
        want_k = k2.grad.view(24, 2, 2, 64).sum(2)
        return bool(torch.allclose(k.grad.float(), want_k.float(), atol=5e-2, rtol=5e-2)
                    and torch.allclose(q.grad.float(), q2.grad.float(), atol=5e-2, rtol=5e-2))
    except Exception as err:  # noqa: BLE001 - any failure here only means: expand the heads
        log.warning("%s: varlen backward with grouped key/value heads failed (%s); expanding them", NAME, err)
        return False


# -----------------------------------------------------------------------------
# Training: packed (padding-free) batches


def _packed_bounds(query, key, attention_mask, kwargs: dict) -> tuple[Any, Any, int, int] | None:
    """(cu_seq_lens_q, cu_seq_lens_k, max_q, max_k) over the flattened batch when it holds packed samples, else None.
    TRL's padding-free collator passes the boundaries; otherwise they come from position_ids that restart inside a
    row (the check reads them on the host, once per forward: every layer gets the same tensor)."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:  # padding, or keys cached before the queries
        return None
    given = [kwargs.get(name) for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")]
    if all(x is not None for x in given):
        cu_q, cu_k, max_q, max_k = given
        return cu_q, cu_k, int(max_q), int(max_k)
    position_ids = kwargs.get("position_ids")
    if position_ids is None or position_ids.shape[-1] < 2:
        return None
    cached = _last_bounds[0]
    if cached is not None and cached[0]() is position_ids:
        return cached[1]
    bounds = _bounds_from_positions(position_ids, batch=query.shape[0])
    _last_bounds[0] = (weakref.ref(position_ids), bounds)
    return bounds


_last_bounds: list[Any] = [None]  # (weakref to the position_ids tensor, its bounds): one host read per forward


def _bounds_from_positions(position_ids, batch: int) -> tuple[Any, Any, int, int] | None:
    """A sample starts where the position is the row's smallest (0, or 1 for some models) and at every row start;
    None when no row restarts inside (an ordinary batch, which SDPA's causal path serves as before)."""
    import torch

    positions = position_ids.expand(batch, -1) if position_ids.shape[0] != batch else position_ids
    length = positions.shape[1]
    flat = positions.reshape(-1)
    starts = flat == flat.min()
    starts[::length] = True
    index = starts.nonzero().flatten()
    if index.numel() == batch:
        return None
    cu = torch.cat([index, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    longest = int(cu.diff().max())
    return cu, cu, longest, longest


def _packed_attention(query, key, value, bounds, scaling: float | None, sliding_window: int | None, dropout: float):
    """One varlen call over the flattened batch: (B, H, T, D) in, (B, T, H, D) out, as transformers' flash path."""
    import torch

    if dropout:
        _warn_once(f"{NAME}: attention dropout {dropout} is not applied in packed training (the kernel has none)")
    batch, heads, length, dim = query.shape
    cu_q, cu_k, max_q, max_k = bounds
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if not q.is_cuda:
        out = reference_varlen(q, k, v, cu_q, cu_k, scaling, sliding_window)
    elif q.dtype in (torch.bfloat16, torch.float16):
        out = _kernel(q, k, v, cu_q, cu_k, max_q, max_k, scaling, sliding_window)
    else:  # float32 states (peft and 4-bit layers can hand them over): the kernel computes in half precision
        half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        out = _kernel(q.to(half), k.to(half), v.to(half), cu_q, cu_k, max_q, max_k, scaling,
                      sliding_window).to(q.dtype)
    return out.view(batch, length, heads, dim)


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def _sdpa_fallback(module: Any, query, key, value, attention_mask, scaling, **kwargs) -> tuple[Any, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:  # a flash-style padding mask: one unpadded sequence is all this path serves
        raise NotImplementedError(f"{NAME}: padded batches outside continuous batching and packed training; "
                                  "train with packing, or load the model with attn_implementation='sdpa'")
    return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, **kwargs)


def _int32():
    import torch

    return torch.int32


def prepare_training(model: Any) -> None:
    """Before training packed batches with `use_varlen`: settle once, outside any checkpointed layer, whether the
    kernel's backward takes grouped key/value heads as they are."""
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    if torch.cuda.is_available() and kv_heads and kv_heads != heads:
        _native_gqa_backward()


def use_varlen(model: Any) -> None:
    """Register the varlen attention with transformers (idempotent) and switch the model to it (through
    models/patches/attention.py: `set_attn_implementation` would try to load a flash-attn kernel from the hub for any
    name that contains "flash")."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    from tunesmith.models.patches.attention import set_attention

    AttentionInterface.register(NAME, _varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    set_attention(model, NAME)


# transformers reads this switch at every attention call (integrations/sdpa_attention.py, use_gqa_in_sdpa).
GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def kv_heads_in_sdpa(device: str | None):
    """On CPU, let SDPA read the KV heads as they are (enable_gqa) instead of transformers copying each into its query
    heads first (repeat_kv). transformers does that only without a mask, and the continuous batch always has one: on
    CPU the copies of a grown cache took a tenth of a decode step (tests/infer/test_sdpa_gqa.py checks the forward is
    bitwise the same, so answers do not change). Not on CUDA, where a mask with enable_gqa falls back to the slow
    math kernel. A value the user set is kept; the switch is restored at the end, so a training run later in the same
    process keeps transformers' default (the backward is not bitwise the same). Wraps generation only: `infer`
    (terminal chat and --dataset), `deploy` and `eval`'s local models."""
    if device != "cpu" or GQA_SWITCH in os.environ:
        yield
        return
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        os.environ.pop(GQA_SWITCH, None)
