#!/bin/bash
# GPU job P18c: max_batch_tokens sweep of the continuous batch (engine alone), 0.5B shape twice in swapped order
# (run-to-run spread), then the 7B shape at 64 streams, default vs the best.
set -o pipefail
R=$OUT/p18c.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 > /tmp/shape.log 2>&1 || { tail /tmp/shape.log; exit 1; }
V1="--variant bt8k {\"max_batch_tokens\":8192} --variant bt4k {\"max_batch_tokens\":4096} --variant bt2k {\"max_batch_tokens\":2048} --variant bt1k {\"max_batch_tokens\":1024}"
V2="--variant bt1k {\"max_batch_tokens\":1024} --variant bt2k {\"max_batch_tokens\":2048} --variant bt4k {\"max_batch_tokens\":4096} --variant bt8k {\"max_batch_tokens\":8192}"
for v in "$V1" "$V2"; do
  timeout 200 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 1 8 64 --max-tokens 256 $v > /tmp/sweep.txt 2>&1
  echo "== sweep rc=$?" | tee -a $R; grep -E "c= " /tmp/sweep.txt | tee -a $R
done
python3 bench/make_shape_model.py --shape qwen2.5-7b-instruct --tokenizer .gputok --out /tmp/m7 > /tmp/shape7.log 2>&1 || { tail /tmp/shape7.log; exit 1; }
timeout 200 python3 bench/engine_decode.py --model /tmp/m7 --concurrency 64 --max-tokens 256 \
  --variant bt8k '{"max_batch_tokens":8192}' --variant bt2k '{"max_batch_tokens":2048}' > /tmp/sweep7.txt 2>&1
echo "== 7b rc=$?" | tee -a $R; grep -E "c= " /tmp/sweep7.txt | tee -a $R; tail -3 /tmp/sweep7.txt >> $R
