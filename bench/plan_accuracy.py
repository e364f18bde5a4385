"""How close is `tunesmith plan` to real peaks? Trains Qwen2.5-0.5B- and 7B-shaped models with random weights (built
from their configs on the GPU: no downloads) for a few steps and compares torch's peak memory with the estimate.

    python bench/plan_accuracy.py --out results.md              # on a CUDA machine
    python bench/plan_accuracy.py --dry-run                     # anywhere: the predictions only
    python bench/plan_accuracy.py --out r.md --loss trl         # TRL 1.16's fused LM head instead of the model's loss
    python bench/plan_accuracy.py --out r.md --loss trl --only "7B dora,7B lora"   # rows whose label has any of these

Each step is what tunesmith's trainer does, as a plain loop: bf16 weights, autocast, forward, backward, grad-norm
clipping, torch AdamW (foreach), zero_grad(set_to_none=True). LoRA: peft, rank 16, alpha 32, dropout 0, all-linear,
adapter inputs kept in bf16 (train/speed.py); DoRA: the same with use_dora (peft's own forward: the patch skips DoRA,
as the trainer's does); QLoRA (when bitsandbytes imports): NF4 with double quantisation, the
other weights left in bf16 (train/setup.py; before Nov 24 2026 peft's fp32 upcast, as then). Sequences are full
length without padding (except the `padded` config), so the estimate runs with padded=False. Configs the estimate
says cannot fit are skipped. Needs torch with CUDA, transformers, peft and tunesmith's own imports (pydantic, PyYAML);
bitsandbytes for the QLoRA rows, trl for --loss trl. Measured on an H100 (Nov 2026, dropout 0.05 and fp32-upcast
QLoRA as the trainer did then): every row within 2.3%. DoRA rows on an H200 (Dec 2026): within 1.5%
(docs/benchmarks.md). The table is rewritten after every row, so a run stopped at a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tunesmith.plan.estimate import GIB, Setup, estimate_training  # noqa: E402
from tunesmith.plan.model_shape import builtin_config, shape_from_config  # noqa: E402

MODELS = {"0.5B": "qwen2.5-0.5b-instruct", "7B": "qwen2.5-7b-instruct"}
# (model, method, seq, micro-batch, checkpointing, extras): extras pick the attention kernel, or pad a quarter of the
# first row (TRL pads batches: the mask path, where transformers repeats k/v and SDPA keeps a float mask per layer).
CONFIGS = [
    ("0.5B", "full", 2048, 4, False, {}),
    ("0.5B", "full", 2048, 4, True, {}),
    ("0.5B", "full", 4096, 8, False, {}),
    ("0.5B", "full", 8192, 1, True, {}),
    ("0.5B", "full", 2048, 2, False, {"attn": "eager"}),
    ("0.5B", "lora", 8192, 1, False, {}),
    ("0.5B", "lora", 2048, 4, False, {"padded": True}),
    ("0.5B", "qlora", 2048, 4, False, {}),
    ("0.5B", "dora", 2048, 4, False, {}),
    ("0.5B", "dora", 2048, 4, True, {}),
    ("7B", "lora", 2048, 1, True, {}),
    ("7B", "lora", 2048, 1, False, {}),
    ("7B", "lora", 8192, 1, True, {}),
    ("7B", "qlora", 2048, 1, True, {}),
    ("7B", "qlora", 8192, 1, True, {}),
    # DoRA: peft rebuilds B·A from an identity of in x in and the norm of W + scale·B·A on every call, also in each
    # checkpointed layer's recompute, and its backward holds fp32 gradients (plan/estimate.py, dora_*_bytes)
    ("7B", "dora", 2048, 1, True, {}),
    ("7B", "dora", 4096, 1, True, {}),
    ("7B", "dora", 2048, 1, False, {}),
    ("7B", "dora", 4096, 1, False, {}),
    # GaLore (rank 128 projections of every attention/MLP matrix, galore-torch's AdamW; 0.5B only: the first step's
    # SVDs of a 7B's 196 matrices take minutes) and LISA (2 sampled layers + embeddings and head train, train/tuners.py)
    ("0.5B", "galore", 2048, 4, False, {}),
    ("0.5B", "galore", 2048, 4, True, {}),
    ("0.5B", "lisa", 2048, 4, False, {}),
    ("7B", "lisa", 2048, 1, True, {}),
    ("7B", "lisa", 4096, 1, True, {}),
]
GALORE_RANK = 128
DEVICE = "cuda"  # "cpu" runs the loop as a smoke test (a tiny shape, torch.cuda's peak counters stubbed)


def hf_config(size: str, attn: str = "sdpa"):
    from transformers import Qwen2Config

    values = builtin_config(MODELS[size])
    values.pop("model_type")
    return Qwen2Config(**values, max_position_embeddings=32768, rope_theta=1_000_000.0, use_cache=False,
                       attn_implementation=attn)


def setup_for(method: str, seq: int, micro: int, ckpt: bool, loss: str, extras: dict) -> Setup:
    return Setup(method=method, seq=seq, micro_batch=micro, checkpointing=ckpt, padded=extras.get("padded", False),
                 attn=extras.get("attn", "sdpa"), loss=loss, lora_rank=GALORE_RANK if method == "galore" else 16,
                 lora_dropout=0.0, device="cuda", trained_layers=2)


# -----------------------------------------------------------------------------
# One measured run


def quantize_nf4(model, torch):
    """Swap every decoder nn.Linear for a bitsandbytes NF4 Linear4bit (double quant), as from_pretrained would."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                      device="meta")
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True).to(DEVICE)
                if lin.bias is not None:
                    q.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
                setattr(parent, name, q)
                del lin
    model.is_loaded_in_4bit = True
    return model


def measure(size: str, method: str, seq: int, micro: int, ckpt: bool, loss: str, steps: int,
            extras: dict) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(hf_config(size, extras.get("attn", "sdpa")), dtype=torch.bfloat16)
    if loss == "trl":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL 1.16's SFTTrainer does
    if method == "qlora":  # bf16: no fp32 upcast of the other weights (train/setup.py)
        model = quantize_nf4(model, torch)
        torch.cuda.empty_cache()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method in ("lora", "qlora", "dora"):
        from peft import LoraConfig, get_peft_model

        from tunesmith.train.speed import keep_adapter_inputs_in_compute_dtype

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 use_dora=method == "dora", task_type="CAUSAL_LM"))
        keep_adapter_inputs_in_compute_dtype(model, torch.bfloat16)
        if ckpt:
            model.enable_input_require_grads()
    model.train()
    if method == "lisa":  # as LisaSampler: two layers train, embeddings, final norm and head always
        from tunesmith.train.tuners import LisaSampler

        LisaSampler(layers=2, interval=20, seed=0).activate(model, interval_index=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = galore_optimizer(model) if method == "galore" else torch.optim.AdamW(params, lr=1e-5)
    vocab = model.config.vocab_size
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (micro, seq), device=DEVICE)
        kwargs = {"fused_lm_head": True} if loss == "trl" else {}
        labels = ids
        if extras.get("padded"):
            mask = torch.ones_like(ids)
            mask[0, -seq // 4:] = 0
            labels = ids.masked_fill(mask == 0, -100)
            kwargs["attention_mask"] = mask
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out_loss = model(input_ids=ids, labels=labels, **kwargs).loss
        out_loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    del model, opt, params, out_loss
    gc.collect()
    torch.cuda.empty_cache()
    return allocated / GIB, reserved / GIB


def galore_optimizer(model):
    """galore-torch's AdamW with the attention and MLP matrices projected, as transformers' galore_adamw builds it."""
    import importlib.util
    import sys
    import types

    if "galore_torch" not in sys.modules and importlib.util.find_spec("bitsandbytes") is None:
        # galore_torch's __init__ imports its 8-bit optimizer (bitsandbytes); the plain AdamW needs none of it
        package = types.ModuleType("galore_torch")
        package.__path__ = importlib.util.find_spec("galore_torch").submodule_search_locations
        sys.modules["galore_torch"] = package
    from galore_torch.adamw import AdamW as GaLoreAdamW

    projected = [m.weight for name, m in model.named_modules() if type(m).__name__ == "Linear"
                 and any(k in name for k in ("self_attn", "mlp"))]
    ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return GaLoreAdamW([{"params": rest}, {"params": projected, "rank": GALORE_RANK, "update_proj_gap": 200,
                                           "scale": 0.25, "proj_type": "std"}], lr=1e-5)


# -----------------------------------------------------------------------------
# Table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--dry-run", action="store_true", help="print the predictions only (no GPU needed)")
    parser.add_argument("--loss", choices=["model", "trl"], default="model",
                        help="model: the model's own loss (full logits); trl: TRL 1.16's fused LM head")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default=None,
                        help="run the configs whose label contains this text (comma-separated: any of them)")
    args = parser.parse_args(argv)

    gpu_total, device_name = None, "no GPU (dry run)"
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --dry-run for the predictions only", file=sys.stderr)
            return 2
        gpu_total = torch.cuda.get_device_properties(0).total_memory / GIB
        device_name = torch.cuda.get_device_name(0)
    try:
        import bitsandbytes  # noqa: F401
        has_bnb = True
    except Exception:  # noqa: BLE001 - missing, or present without a usable CUDA build
        has_bnb = False

    rows = ["| config | predicted GiB | measured allocated | measured reserved | error % | predicted reserved | peak at |",
            "|---|---|---|---|---|---|---|"]
    header = (f"Peak memory per step, predicted by tunesmith.plan vs torch.cuda.max_memory_* on {device_name}; "
              f"loss: {args.loss}; {args.steps} steps; error = (predicted - allocated) / allocated.\n\n")
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    for size, method, seq, micro, ckpt, extras in CONFIGS:
        label = f"{size} {method} seq {seq} mb {micro}{' ckpt' if ckpt else ''}" + "".join(
            f" {v if isinstance(v, str) else k}" for k, v in extras.items())
        if wanted and not any(w in label for w in wanted):
            continue
        shape = shape_from_config({**builtin_config(MODELS[size])}, name=MODELS[size])
        est = estimate_training(shape, setup_for(method, seq, micro, ckpt, args.loss, extras))
        peak_at = max(est.phases, key=est.phases.get)
        pred, pred_res = est.allocated / GIB, est.reserved / GIB
        cells = [label, f"{pred:.2f}"]
        if args.dry_run:
            cells += ["-", "-", "-"]
        elif method == "qlora" and not has_bnb:
            cells += ["skipped: no bitsandbytes", "-", "-"]
        elif est.total / GIB > 0.97 * gpu_total:
            cells += [f"skipped: needs {est.total / GIB:.0f} of {gpu_total:.0f} GiB", "-", "-"]
        else:
            start = time.time()
            try:
                alloc, res = measure(size, method, seq, micro, ckpt, args.loss, args.steps, extras)
                cells += [f"{alloc:.2f}", f"{res:.2f}", f"{100 * (pred - alloc) / alloc:+.1f}"]
            except Exception as err:  # noqa: BLE001 - an OOM or a missing kernel is a result too
                cells += [f"failed: {type(err).__name__}", "-", "-"]
                import torch

                gc.collect()
                torch.cuda.empty_cache()
            print(f"{label}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        rows.append("| " + " | ".join(cells + [f"{pred_res:.2f}", peak_at]) + " |")
        print(rows[-1], flush=True)
        if args.out:  # after every row: a run stopped at a time limit keeps what it measured
            Path(args.out).write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    print("\n" + header + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
