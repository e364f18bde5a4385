#!/bin/bash
# GPU job P4: GPTQ / FP8 exports of a Qwen2.5-0.5B-shape model (llmcompressor 0.14 on the image's transformers 5.17),
# then tunesmith deploy serving bf16 vs each export (bench/serve.py). Everything into $OUT/p4.txt
set -o pipefail
R=$OUT/p4.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whlq/compressed_tensors*.whl .whlq/loguru*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/qsite .whlq/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
printf '#!/bin/sh\nPYTHONPATH=/tmp/qsite exec python3 "$@"\n' > /tmp/qpy && chmod +x /tmp/qpy
export TUNESMITH_QUANT_PYTHON=/tmp/qpy
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m tunesmith.cli.main "$@"\n' > /tmp/bin/tunesmith && chmod +x /tmp/bin/tunesmith
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a $R
python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 > /tmp/shape.log 2>&1 || { tail /tmp/shape.log; exit 1; }
for q in ${QUANTS:-gptq fp8}; do
  s=$(date +%s.%N)
  timeout 150 tunesmith export --model /tmp/m05 --quant $q --group-size 128 --calib-dataset prd-assistant --calib-samples 128 --output /tmp/e-$q > /tmp/export-$q.log 2>&1
  echo "$q rc=$? wall=$(python3 -c "import time;print(round(time.time()-$s,1))") s" | tee -a $R
  tail -4 /tmp/export-$q.log | tee -a $R
done
for m in m05 e-gptq e-fp8; do
  timeout 130 python3 bench/serve.py --model /tmp/$m --servers tunesmith --concurrency 1 64 --rounds 1 --max-tokens 128 > /tmp/serve-$m.log 2>&1
  echo "== serve $m rc=$?" | tee -a $R; tail -8 /tmp/serve-$m.log | tee -a $R
  grep -i -E "error|Traceback|warn" /tmp/bench-tunesmith.log | tail -5 | tee -a $R
done
