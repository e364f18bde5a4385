"""The fast path of supervised training, chosen from the hardware; nothing here changes what a CPU run does.

    resolve_packing(cfg, device, dtype)          # packing unset -> on where the varlen kernel runs (preflight calls it)
    padding_free(cfg, device, dtype)             # unpacked batches of several rows: flattened, no pad tokens computed
    applied = prepare_model(cfg, model, device, dtype)   # varlen attention for packed batches, liger kernels
    speed_args(cfg, device)                      # TRL arguments: fused AdamW, (partial) gradient checkpointing

Each step and the gain it is predicted to bring on an H100 (docs/benchmarks.md, "SFT speed (GPU)"; bench/sft.py
measures them against TRL):
  1. padding-free packing + PyTorch's varlen flash kernel (infer/attention.py): no padding and no mask; TRL's best
     needs flex attention for that (60-80 s of compile) since SDPA would build a dense mask over the flattened batch.
     With packing off, a batch of several rows is flattened the same way (the same rows per step, no pad tokens),
     as Unsloth does by default.
  2. gradient checkpointing only when the memory plan needs it, on as few layers as fit (plan/speed.py).
  3. liger's RMSNorm, RoPE and SwiGLU kernels (models/kernels.py): fewer launches and fewer saved activations.
  4. fused AdamW: one kernel per parameter group (already transformers' default on torch >= 2.8; set so it stays).
  5. LoRA inputs stay in the compute dtype (models/patches/peft_lora.py): peft casts each adapter's input to the adapter's float32 weight, then
     autocast casts it back to bf16 for the matmul; two full copies of the activation per adapter and pass (14 % of
     a 7B LoRA step on the H100) and a saved copy each. Under autocast the matmul sees the same bf16 values without
     them (bf16 -> fp32 -> bf16 is exact), so training with half-precision autocast skips peft's cast.
  6. QLoRA in bf16 keeps the weights that are not 4-bit in bf16 (train/setup.py, load_trainable): peft's
     preparation would upcast them to fp32 and with them every hidden state.
  7. LoRA's update accumulated by B's matmul into the frozen layer's output (models/patches/peft_lora.py): peft's scale-and-add
     passes over every projection output are 82 ms of a 576 ms 7B LoRA step; predicted -10 % step time. QLoRA's
     4-bit layers too (peft also clones their output first: 87 ms of a 622 ms 7B QLoRA step).
Packing and the gradient-checkpointing choice are made before the weights load, by train/preflight.py (with the
memory plan's pure functions in plan/speed.py), for every training command.
"""

from __future__ import annotations

from typing import Any

from tunesmith.infer import attention
from tunesmith.models.kernels import apply_kernels
from tunesmith.models.patches.peft_lora import keep_adapter_inputs_in_compute_dtype, use_fused_forward
from tunesmith.models.s2_attention import use_s2_attention
from tunesmith.train import tuners
from tunesmith.train.launch import deepspeed_stage, fsdp_wraps_checkpointing


def varlen_runs(device: str, dtype: Any) -> bool:
    """Whether packed batches can use PyTorch's varlen flash kernel: CUDA, half precision, torch >= 2.10."""
    return device == "cuda" and attention.torch_varlen_available(dtype)


def flattens(cfg: Any, device: str, dtype: Any) -> bool:
    """Whether this run can flatten a batch into one row of samples that do not see each other: where the varlen
    kernel runs (elsewhere they would need a dense block mask over the flattened batch: CPU, MPS, float32)."""
    private = getattr(getattr(cfg, "dp", None), "epsilon", None) is not None  # DP-SGD: one sample per row
    # LongLoRA: S2-Attn folds padded rows into groups; a flattened row would need the dense mask of all its samples.
    # Sequence parallel: Ulysses wraps sdpa (train/launch.py), not the varlen kernel flattening switches to.
    return (varlen_runs(device, dtype) and not private and getattr(cfg, "tuner", None) != "longlora"
            and getattr(cfg, "sequence_parallel", 1) == 1)


def resolve_packing(cfg: Any, device: str, dtype: Any) -> None:
    """packing left unset -> on where the varlen kernel runs, off elsewhere."""
    if getattr(cfg, "packing", False) is None:
        cfg.packing = flattens(cfg, device, dtype)


def padding_free(cfg: Any, device: str, dtype: Any) -> bool:
    """Unpacked batches of several rows go padding-free where the varlen kernel runs: TRL's collator flattens the
    rows into one with positions restarting per row, so no step computes pad tokens (short rows of uneven lengths
    padded to the longest spend most of a step on padding). The rows per step and the loss are those of padding."""
    return not cfg.packing and cfg.batch_size > 1 and flattens(cfg, device, dtype)


def prepare_model(cfg: Any, model: Any, device: str, dtype: Any, own_collator: bool = False) -> dict[str, str]:
    """Switch the model to the fast kernels this machine runs; returns what was chosen, for config.yaml. Packing and
    checkpointing are decided before, by train/preflight.py. `own_collator`: the batches come from a collator of the
    command's own (a VLM's), not TRL's, so they are neither packed nor flattened here."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    chosen = {"attention": str(base.config._attn_implementation)}
    flat = not own_collator and (cfg.packing or padding_free(cfg, device, dtype))
    if getattr(cfg, "tuner", None) == "longlora":  # shifted sparse attention while training, full attention after
        chosen["attention"] = use_s2_attention(model, cfg.longlora.group_size_ratio)
    elif flat and varlen_runs(device, dtype):
        attention.use_varlen(base)  # sample boundaries come from TRL's padding-free collator
        attention.prepare_training(base)
        chosen["attention"] = attention.NAME
        if not cfg.packing:
            chosen["batches"] = "padding-free"
    chosen["kernels"] = apply_kernels(getattr(cfg, "kernels", "none"), model, device)
    if keep_adapter_inputs_in_compute_dtype(model, dtype):
        chosen["adapter_inputs"] = str(dtype).removeprefix("torch.")
    # ZeRO-3 gathers a weight only for its own module's forward; the fused forward reads lora_B's weight directly
    zero3 = getattr(cfg, "deepspeed", None) and deepspeed_stage(cfg.deepspeed) == 3
    if device == "cuda" and not zero3 and use_fused_forward(model):
        chosen["lora_forward"] = "fused (addmm into the base output)"
    chosen["optim"] = {**speed_args(cfg, device), **tuners.optimizer_args(cfg)}.get("optim", "transformers default")
    return chosen


def speed_args(cfg: Any, device: str) -> dict[str, Any]:
    """The TrainingArguments the fast path sets: optimizer and activation checkpointing."""
    args: dict[str, Any] = {}
    if device == "cuda" and getattr(cfg, "tuner", None) != "galore":  # GaLore's optimizer: train/tuners.py
        args["optim"] = "adamw_torch_fused"
    # FSDP2 of full weights checkpoints through its own wrapper (fsdp_config, train/launch.py fsdp_args); transformers
    # refuses both at once
    checkpointing = bool(cfg.gradient_checkpointing) and not fsdp_wraps_checkpointing(cfg)
    args["activation_checkpointing"] = checkpointing
    if checkpointing:
        kwargs: dict[str, Any] = {"use_reentrant": False}
        every = getattr(cfg, "checkpoint_every", None) or 1
        if every > 1:  # the other layers keep their activations (transformers >= 5.23)
            kwargs["every_n_layers"] = every
        args["activation_checkpointing_kwargs"] = kwargs
    return args
