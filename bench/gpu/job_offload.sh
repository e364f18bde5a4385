#!/bin/bash
# GPU job: offloaded gradient checkpointing (`--gradient-checkpointing offload`, train/offload.py) on one H200.
#   bash bench/gpu/job_offload.sh      carry: .whl .whls .whlu (scripts/unsloth-wheels.sh fills .whlu)
# 1. the gpu-marked tests of tests/train/test_offload.py (inputs leave the GPU, gradients bit-equal, sft trains);
# 2. L8 (Unsloth's published Llama-3.1-8B QLoRA setting) in one bench/sft.py invocation: Unsloth packed, ours
#    offloaded, ours with plain checkpointing (scripts/unsloth-bench-job.sh does the installs and the timing).
set -o pipefail
R=$OUT/offload.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/train/test_offload.py --basetemp /tmp/gt > $OUT/gpu-tests.txt 2>&1
echo "== gpu tests rc=$?" | tee -a $R; tail -8 $OUT/gpu-tests.txt | tee -a $R
ONLY="L8 unsloth:packing=true tunesmith:gradient_checkpointing=offload tunesmith:gradient_checkpointing=true" \
  LIMIT=${LIMIT:-470} bash scripts/unsloth-bench-job.sh
