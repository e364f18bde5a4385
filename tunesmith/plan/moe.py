"""What a mixture-of-experts layer adds to a training step's memory, from the model's shape. Pure functions, no torch.

    moe_block_bytes(shape, setup)        # bytes saved for backward per token by one MoE block (router + routed experts)
    expert_copy_bytes(shape, setup)      # bytes per MoE layer that lora.experts saves (peft merges W + B·A for the op)
    router_logits_bytes(shape, setup)    # bytes per token, all layers, that the load-balancing loss keeps to the end

Counted from transformers 5.23's MoE forward (integrations/moe.py, grouped_mm, the default experts implementation) and
its routers, and checked with torch's saved-tensor hooks on tiny models of each architecture (tests/plan/test_moe.py):
  router   softmax of the logits in fp32 (E per token), the top-k indices (int64), DeepSeek's sigmoid scores
  dispatch the sort permutation, the token index and its inverse (int64 per routed pair), the routing weights
  experts  per routed pair (top_k per token), as a dense SwiGLU of the expert's width: the gate_up output (2 x width),
           SiLU's output (width), the down projection's output (hidden, kept for the routing weight's gradient); with
           trainable expert weights (full, lora.experts) also the gathered input (hidden) and the down input (width)
gpt-oss gates with a clamped, interleaved SwiGLU (gate_up[..., ::2]) that keeps more per pair. Weights of every expert
are stored (model_shape.py); only the top_k experts' activations are per token. On CUDA (grouped_mm) the plan was
within +0.1 to +1.6 % of torch's peak on Qwen3-30B-A3B- and Mixtral-shaped models (bench/plan_moe.py,
docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

from tunesmith.plan.model_shape import ATTENTION_ONLY_LORA, ModelShape

# What each routed (token, expert) pair of gpt-oss keeps beyond a dense SwiGLU, in widths of the compute dtype: its gate
# is gate_up[..., ::2] clamped, then glu = gate * sigmoid(alpha * gate), out = (up + 1) * glu, each step kept (the
# clamped gate, sigmoid's output and the glu product).
GPT_OSS_GATE = 3
# Families whose fused experts peft adapts under all-linear whatever is asked (model_shape.py says why).
EXPERTS_ALWAYS = ATTENTION_ONLY_LORA


def moe_block_bytes(shape: ModelShape, s: Any) -> float:
    """Bytes saved for backward per token by one MoE layer's router and routed experts (the shared experts and the
    dense MLP are a dense SwiGLU: estimate.layer_activation_bytes counts them)."""
    if not shape.moe:
        return 0.0
    a = 2 if s.dtype in ("bfloat16", "float16") else 4
    k, h, w, e = shape.top_k, shape.hidden, shape.expert_intermediate, shape.experts
    trains_experts = s.method in ("full", "galore", "lisa", "freeze") or lora_experts(shape, s)
    router = 4 * e + 8 * k  # fp32 probabilities (softmax or DeepSeek's sigmoid), top-k indices
    if shape.model_type == "gpt_oss":
        router = a * k + 8 * k  # its softmax runs over the top-k logits only
    dispatch = k * (3 * 8 + a)  # perm, perm // top_k, its inverse (int64); the sorted routing weights
    pair = 2 * w + w + h  # gate_up output, SiLU output, down output
    if shape.model_type == "gpt_oss":
        pair += GPT_OSS_GATE * w
    if trains_experts:
        pair += h + w  # the gathered input and the down projection's input, for the experts' weight gradients
    total = router + dispatch + k * a * pair
    if shape.shared_gate:  # Qwen2-MoE: sigmoid(gate) x shared expert output keeps that output
        total += a * h + 4
    if s.method in ("full", "galore", "lisa", "freeze"):  # a trainable router keeps its input: its own copy in these
        if shape.model_type in EXPERTS_ALWAYS:
            total += 2 * a * h  # DeepSeek scores an fp32 copy of its input, cast back; its shared experts get another
        elif shape.model_type == "gpt_oss":
            total += a * h
    return total


def lora_experts(shape: ModelShape, s: Any) -> bool:
    """Whether LoRA adapts the experts: asked (lora.experts), or always for DeepSeek, whose first layers' dense MLP
    shares the experts' names, so peft 0.21.2 adapts the fused experts too (models/families.py, experts_always)."""
    return shape.moe and s.method in ("lora", "qlora", "dora") and (getattr(s, "lora_experts", False)
                                                                     or shape.model_type in EXPERTS_ALWAYS)


def expert_copy_bytes(shape: ModelShape, s: Any) -> float:
    """lora.experts: peft's target_parameters wrapper hands the op W + scale x B·A, a full copy of the layer's expert
    weights in the compute dtype, which the op keeps for backward: per MoE layer, not per token."""
    if not (shape.moe and lora_experts(shape, s) and s.method in ("lora", "qlora", "dora")):
        return 0.0
    a = 2 if s.dtype in ("bfloat16", "float16") else 4
    return a * shape.experts * 3 * shape.hidden * shape.expert_intermediate


def router_logits_bytes(shape: ModelShape, s: Any) -> float:
    """The load-balancing loss (TRL turns it on where the config has a coefficient): every layer's router logits stay
    alive until the loss (compute dtype), and its softmax keeps an fp32 copy for backward. Per token, all layers."""
    if not (shape.moe and shape.router_aux):
        return 0.0
    a = 2 if s.dtype in ("bfloat16", "float16") else 4
    return shape.moe_layers * shape.experts * (a + 4)


def attention_bytes(shape: ModelShape, s: Any) -> float:
    """What the attention of these architectures keeps per token beyond (negative: short of) estimate.py's count of a
    plain attention (q, k, v, output, logsumexp; eager's probabilities at 6 bytes per head and pair).
      gpt-oss  eager softmax over the scores and one sink column, in the compute dtype only: a bytes per pair, not 6
      MLA      (DeepSeek) q and k of heads x (nope + rope), v of heads x v_head_dim, and the latents' RMSNorms (fp32
               inputs; their outputs too when the weights train). q and v head sizes differ, so on CPU PyTorch's SDPA
               runs its math path: fp32 q, k, v and probabilities (seq per token and head). On a GPU the
               memory-efficient kernel is assumed (q, k, v, output, logsumexp), not checked there."""
    a = 2 if s.dtype in ("bfloat16", "float16") else 4
    extra = 0.0
    if shape.sinks and s.attn == "eager":
        extra -= (6 - a) * shape.heads * s.seq
    if shape.mla:
        q_rank, kv_rank, _, _, _ = shape.mla
        q, v, heads = shape.q_dim, shape.v_dim, shape.heads
        counted = a * (q + 2 * shape.kv_dim) + a * q + 4 * heads
        norms = 4 * (kv_rank + q_rank)
        if s.method in ("full", "galore", "lisa", "freeze"):
            norms += 2 * a * (kv_rank + q_rank)  # the norms' outputs and kv_b_proj's (q_b_proj's) input
        core = 4 * (2 * q + v) + 4 * heads * s.seq if s.device == "cpu" else a * (2 * q + v) + 4 * heads
        extra += core + a * v + norms - counted
    return extra
