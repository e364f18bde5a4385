"""Run by test_estimate.py in a fresh process: two training steps of a tiny float32 model on CPU, and the process's peak
RSS, which is what the plan's CPU estimate predicts (plan/estimate.py: imports, live tensors and glibc's heap).

    python tests/plan/rss_step.py '{"vocab_size": ..., "batch": 4, "seq": 256, "method": "lora", "loss": "trl"}'

method: full | lora (peft, rank 16, all-linear, dropout 0: the trainer's defaults); loss: model (the model's own, full
logits) | trl (TRL 1.16's fused LM head, as SFTTrainer adds it; without Triton it folds whole tiles with torch ops).
With loss trl the process imports what `tunesmith sft` imports (TRL's trainer, datasets, peft), so that its baseline is
the trainer's. Prints {"base": RSS before the model, "peak": VmHWM after the steps} in bytes."""

import gc
import json
import sys

import psutil
import torch
import transformers as tf

cfg = json.loads(sys.argv[1])
batch, seq = cfg.pop("batch"), cfg.pop("seq")
method, loss = cfg.pop("method", "full"), cfg.pop("loss", "model")
if loss == "trl":
    import datasets  # noqa: F401 - the trainer's import baseline
    import trl  # noqa: F401
    from trl.trainer.utils import add_fused_lm_head

torch.manual_seed(0)
gc.collect()
base = psutil.Process().memory_info().rss
model = tf.AutoModelForCausalLM.from_config(tf.Qwen2Config(**cfg, attn_implementation="sdpa"), dtype=torch.float32)
if loss == "trl":
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # trl/trainer/sft_trainer.py does this
if method == "lora":
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, cfg["vocab_size"], (batch, seq))
for _ in range(2):
    if loss == "trl":
        out = model(input_ids=ids, labels=ids, fused_lm_head=True)
        (-out.log_probs.sum() / out.label_mask.sum()).backward()  # SFTTrainer.compute_loss
    else:
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
# VmHWM, not ru_maxrss: Linux copies the parent's ru_maxrss into a forked child, so a large test process (after
# tests/train loaded models) inflated the child's "peak" to its own size. VmHWM belongs to this process's memory map.
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak_kib * 1024}))
