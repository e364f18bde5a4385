#!/bin/bash
# GPU job P20: speculative decoding's speed-up through tunesmith deploy (bench/serve.py tunesmith vs tunesmith-spec),
# 7B shape target with a 4-layer draft that is always accepted (bench/make_draft_pair.py), and ngram; then prefix
# caching's TTFT (bench/prefix_cache.py) on the 0.5B shape with CUDA graphs and async batching.
set -o pipefail
R=$OUT/p20.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m tunesmith.cli.main "$@"\n' > /tmp/bin/tunesmith && chmod +x /tmp/bin/tunesmith
export PATH=/tmp/bin:$PATH
python3 bench/make_shape_model.py --shape qwen2.5-7b-instruct --tokenizer .gputok --out /tmp/m7 > /tmp/shape7.log 2>&1 || { tail /tmp/shape7.log; exit 1; }
python3 bench/make_draft_pair.py --model /tmp/m7 --layers 4 --target /tmp/t7 --draft /tmp/d7 2>&1 | tail -1 | tee -a $R
rm -rf /tmp/m7
timeout 260 python3 bench/serve.py --model /tmp/t7 --servers tunesmith tunesmith-spec --speculative draft=/tmp/d7 \
  --concurrency 1 8 --rounds 1 --max-tokens 256 > $OUT/spec-draft.txt 2>&1
echo "== draft rc=$?" | tee -a $R; tail -9 $OUT/spec-draft.txt | tee -a $R
grep -iE "error|Traceback" /tmp/bench-tunesmith-spec.log | tail -5 | tee -a $R
timeout 150 python3 bench/serve.py --model /tmp/t7 --servers tunesmith-spec --speculative ngram \
  --concurrency 1 8 --rounds 1 --max-tokens 256 > $OUT/spec-ngram.txt 2>&1
echo "== ngram rc=$?" | tee -a $R; tail -5 $OUT/spec-ngram.txt | tee -a $R
if [ -f bench/prefix_cache.py ]; then
  python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 > /tmp/shape.log 2>&1
  timeout 120 python3 bench/prefix_cache.py --model /tmp/m05 --system-tokens 2000 --requests 8 > $OUT/prefix.txt 2>&1
  echo "== prefix rc=$?" | tee -a $R; tail -8 $OUT/prefix.txt | tee -a $R
fi
