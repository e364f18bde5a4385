"""Run by test_estimate.py in a fresh process: peak RSS growth of building a model and taking 2 training steps.
Prints {"base": rss before the model, "peak": the process's RSS high-water mark after the steps} in bytes."""

import gc
import json
import sys

import psutil
import torch
import transformers as tf

torch.manual_seed(0)
cfg = json.loads(sys.argv[1])
batch, seq = cfg.pop("batch"), cfg.pop("seq")
gc.collect()
base = psutil.Process().memory_info().rss
model = tf.AutoModelForCausalLM.from_config(tf.Qwen2Config(**cfg, attn_implementation="sdpa"), dtype=torch.float32)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, cfg["vocab_size"], (batch, seq))
for _ in range(2):
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
# VmHWM, not ru_maxrss: Linux copies the parent's ru_maxrss into a forked child, so a large test process (after
# tests/train loaded models) inflated the child's "peak" to its own size. VmHWM belongs to this process's memory map.
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak_kib * 1024}))
