#!/bin/bash
# GPU job P18b: continuous-batching cache size variants (engine alone), then the best one profiled and sampled.
set -o pipefail
R=$OUT/p18b.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, inspect; from torch.nn.attention import varlen; print(torch.__version__, inspect.signature(varlen.varlen_attn))" 2>&1 | tee -a $R
python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 > /tmp/shape.log 2>&1 || { tail /tmp/shape.log; exit 1; }
timeout 300 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 1 8 64 --max-tokens 256 \
  --variant base '{}' --variant mem05 '{"max_memory_percent": 0.05}' \
  --variant mem05_bt2k '{"max_memory_percent": 0.05, "max_batch_tokens": 2048}' > $OUT/variants.txt 2>&1
echo "== variants rc=$?" | tee -a $R; grep -E "c= " $OUT/variants.txt | tee -a $R
timeout 150 python3 bench/stack_sampler.py --out $OUT/stacks-mem05.txt --when-exists /tmp/flag bench/engine_decode.py \
  --model /tmp/m05 --concurrency 1 64 --max-tokens 256 --variant mem05 '{"max_memory_percent": 0.05}' \
  --profile --sample-flag /tmp/flag > $OUT/profile-mem05.txt 2>&1
echo "== profile rc=$?" | tee -a $R; grep -E "c= |GPU busy" $OUT/profile-mem05.txt | tee -a $R
