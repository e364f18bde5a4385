"""How close is `tunesmith plan` to real peaks on mixture-of-experts models? Trains MoE models with random weights
(built from configs on the GPU: no downloads) for a few steps and compares torch's peak allocated memory with the
estimate, as bench/plan_accuracy.py does for dense models.

    python bench/plan_moe.py --out results.md          # on a CUDA machine
    python bench/plan_moe.py --dry-run                 # anywhere: the predictions only

Shapes: Qwen3-30B-A3B's layer (128 experts, top 8, width 768) on 12 of its 48 layers; Mixtral-8x7B's layer on 4 of
its 32; a small Qwen3-MoE for full fine-tuning. Each step is what the CPU test (tests/plan/test_moe.py) checks op by
op, on CUDA: bf16 weights under autocast, the model's own loss with the load-balancing loss on (output_router_logits,
as TRL trains these models), AdamW; LoRA through tunesmith's own lora_config (routers frozen; lora.experts adds peft's
target_parameters adapters on the fused experts). transformers' MoE forward runs grouped_mm on CUDA: what it keeps
for backward is what this measures against the plan.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tunesmith.plan.estimate import GIB, Setup, estimate_training  # noqa: E402
from tunesmith.plan.model_shape import shape_from_config  # noqa: E402

QWEN3_30B_A3B = dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                     moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                     num_experts=128, num_experts_per_tok=8)
MIXTRAL_8X7B = dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                    num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2)
MODELS = {
    "Qwen3-30B-A3B x12 layers": {**QWEN3_30B_A3B, "num_hidden_layers": 12},
    "Mixtral-8x7B x4 layers": {**MIXTRAL_8X7B, "num_hidden_layers": 4},
    "Qwen3-MoE 0.6B": {**QWEN3_30B_A3B, "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 4,
                       "num_experts": 32, "moe_intermediate_size": 384, "num_hidden_layers": 8},
}
# (model, method, seq, micro-batch, checkpointing); method lora+experts: lora.experts
CONFIGS = [
    ("Qwen3-30B-A3B x12 layers", "lora", 4096, 1, False),
    ("Qwen3-30B-A3B x12 layers", "lora", 8192, 1, True),
    ("Qwen3-30B-A3B x12 layers", "lora+experts", 2048, 1, True),
    ("Mixtral-8x7B x4 layers", "lora", 4096, 1, False),
    ("Qwen3-MoE 0.6B", "full", 2048, 2, False),
    ("Qwen3-MoE 0.6B", "full", 4096, 2, True),
]


def setup_for(method: str, seq: int, micro: int, ckpt: bool) -> Setup:
    return Setup(method="full" if method == "full" else "lora", lora_rank=16, lora_experts=method == "lora+experts",
                 seq=seq, micro_batch=micro, checkpointing=ckpt, padded=False, loss="model", lora_dropout=0.0,
                 device="cuda")


def measure(values: dict, method: str, seq: int, micro: int, ckpt: bool, steps: int) -> float:
    import torch
    import transformers as tf
    from peft import get_peft_model

    from tunesmith.config.sections import LoraCfg
    from tunesmith.models.load import lora_config
    from tunesmith.train.speed import keep_adapter_inputs_in_compute_dtype

    fields = {k: v for k, v in values.items() if k != "model_type"}
    cfg = tf.AutoConfig.for_model(values["model_type"], **fields, use_cache=False, output_router_logits=True)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method != "full":
        model = get_peft_model(model, lora_config(LoraCfg(rank=16, alpha=32, dropout=0.0,
                                                          experts=method == "lora+experts"), "lora", model))
        keep_adapter_inputs_in_compute_dtype(model, torch.bfloat16)
        if ckpt:
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        ids = torch.randint(0, cfg.vocab_size, (micro, seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    torch.cuda.synchronize()
    allocated = torch.cuda.max_memory_allocated()
    del model, opt, params
    gc.collect()
    torch.cuda.empty_cache()
    return allocated / GIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--dry-run", action="store_true", help="print the predictions only (no GPU needed)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    device = "no GPU (dry run)"
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --dry-run for the predictions only", file=sys.stderr)
            return 2
        device = torch.cuda.get_device_name(0)
    rows = [f"Peak allocated memory per step, tunesmith.plan vs torch.cuda.max_memory_allocated on {device}; "
            f"{args.steps} steps; error = (predicted - measured) / measured.", "",
            "| model | method | seq x batch | ckpt | params | predicted GiB | measured GiB | error % |",
            "|---|---|---|---|---|---|---|---|"]
    for name, method, seq, micro, ckpt in CONFIGS:
        shape = shape_from_config(MODELS[name], name=name)
        est = estimate_training(shape, setup_for(method, seq, micro, ckpt))
        cells = [name, method, f"{seq} x {micro}", "yes" if ckpt else "no", f"{shape.params() / 1e9:.2f}B",
                 f"{est.allocated / GIB:.2f}"]
        if args.dry_run:
            cells += ["-", "-"]
        else:
            start = time.time()
            try:
                measured = measure(MODELS[name], method, seq, micro, ckpt, args.steps)
                cells += [f"{measured:.2f}", f"{100 * (est.allocated / GIB - measured) / measured:+.1f}"]
            except Exception as err:  # noqa: BLE001 - an OOM or a missing kernel is a result too
                cells += [f"failed: {type(err).__name__}: {str(err)[:80]}", "-"]
                gc.collect()
            print(f"{name} {method}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
        if args.out:  # after every row: a run stopped at a time limit keeps what it measured
            Path(args.out).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
