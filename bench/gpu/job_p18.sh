#!/bin/bash
# GPU job P18: where serving time goes. Engine alone (bench/engine_decode.py, profiled) and tunesmith deploy vs
# transformers serve end to end (bench/serve.py), both under bench/stack_sampler.py. Everything into $OUT.
set -o pipefail
R=$OUT/p18.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 %s/bench/stack_sampler.py --out %s/stacks-deploy.txt -m tunesmith.cli.main "$@"\n' "$PWD" "$OUT" > /tmp/bin/tunesmith
printf '#!/bin/sh\nexec python3 -m transformers.cli.transformers "$@"\n' > /tmp/bin/transformers
chmod +x /tmp/bin/tunesmith /tmp/bin/transformers
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a $R
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a $R
python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 > /tmp/shape.log 2>&1 || { tail /tmp/shape.log; exit 1; }
timeout 200 python3 bench/stack_sampler.py --out $OUT/stacks-engine.txt bench/engine_decode.py --model /tmp/m05 \
  --concurrency 1 64 --max-tokens 256 ${ENGINE_ARGS:---profile} > $OUT/engine.txt 2>&1
echo "== engine rc=$?" | tee -a $R; grep -E "c= |GPU busy" $OUT/engine.txt | tee -a $R
timeout 240 python3 bench/serve.py --model /tmp/m05 --servers ${SERVERS:-tunesmith transformers} --concurrency 1 64 --rounds 1 --max-tokens 256 > $OUT/serve.txt 2>&1
echo "== serve rc=$?" | tee -a $R; tail -12 $OUT/serve.txt | tee -a $R
cp /tmp/bench-*.log $OUT/ 2>/dev/null
