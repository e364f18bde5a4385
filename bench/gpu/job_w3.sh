#!/bin/bash
# GPU job: QLoRA's 4-bit layers on the fused LoRA forward (models/patches/peft_lora.py) and offloaded checkpointing.
#   bash bench/gpu/job_w3.sh      carry: .whl (../shared/gpu-wheels.sh; bitsandbytes from .whlu/common)
# 1. gpu tests: the fused forward on CUDA's 4-bit layers (loss and gradients as peft's), offloaded checkpointing;
# 2. W3 (Qwen2.5-7B shape, QLoRA r16, 4,096 tokens x 2) in one bench/sft.py invocation: tunesmith against TRL's best.
set -o pipefail
R=$OUT/w3.txt
T0=$(date +%s)
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
$PIP .whl/*.whl .whlu/common/bitsandbytes-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $R
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/train/test_offload.py tests/train/test_fast_path.py \
  -k "offload or qlora_4bit or fused" --basetemp /tmp/gt > $OUT/gpu-tests.txt 2>&1
echo "== gpu tests rc=$? ($(( $(date +%s) - T0 )) s)" | tee -a $R; tail -6 $OUT/gpu-tests.txt | tee -a $R
PEAK=$(python3 bench/gpu/peak_tflops.py)
echo "bf16 matmul peak $PEAK TFLOP/s" | tee -a $R
LEFT=$(( ${LIMIT:-540} - $(date +%s) + T0 ))
timeout $LEFT python3 bench/sft.py --workload W3 --configs tunesmith trl-best --peak-tflops $PEAK \
  --cache /dev/shm/tsbench --child-timeout $(( LEFT / 2 - 10 )) --out /tmp/res > $OUT/w3-bench.txt 2>&1
echo "== W3 rc=$? ($(( $(date +%s) - T0 )) s)" | tee -a $R; grep -E "^\||tok/s" $OUT/w3-bench.txt | tee -a $R
