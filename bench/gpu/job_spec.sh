#!/bin/bash
# GPU job spec: --speculative ngram inside the continuous batch (infer/speculative_batch.py) on one H200.
#   bash bench/gpu/job_spec.sh [tests|bench|all]      (default all; results under $OUT, summary in $OUT/spec.txt)
# tests: the gpu-marked tests: speculation under CUDA graphs (answers equal, a copy takes fewer steps, prefix sharing
#        on) and prefix caching after cancelled requests
# bench: bench/engine_decode.py on a 7B shape (Qwen2.5-7B config, bf16), 1 and 8 streams, 128 tokens, one invocation
#        each: the continuous batch as shipped, +argmax (greedy steps take the argmax, no proposals) and +ngram
#        (10 proposals), with the speed-ups printed:
#   a. echo target: every layer's o_proj/down_proj zeroed (the full model's compute, no contribution) and the head =
#      the embeddings, so the answer repeats the prompt's last token and prompt lookup is accepted: the upper bound of
#      the mechanism at this model's cost (like bench/make_draft_pair.py for draft models)
#   b. random weights: their answers seldom repeat, little is accepted: what speculating costs (synchronous batching)
set -o pipefail
PART=${1:-all}
R=$OUT/spec.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESMITH_TEST_TOKENIZER=$PWD/.gputok
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $R
if [ "$PART" != bench ]; then
  timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -k "prefix or speculat" tests/infer/test_prefix_cache.py \
    tests/infer/test_speculative_batch.py --basetemp /tmp/gt > $OUT/gpu-tests.txt 2>&1
  echo "== gpu tests rc=$?" | tee -a $R; tail -12 $OUT/gpu-tests.txt | tee -a $R
fi
[ "$PART" = tests ] && exit 0
python3 bench/make_shape_model.py --shape qwen2.5-7b-instruct --tokenizer .gputok --out /tmp/m7 > /tmp/shape7.log 2>&1 \
  || { tail /tmp/shape7.log | tee -a $R; exit 1; }
python3 bench/make_echo_target.py --model /tmp/m7 --out /tmp/e7 2>&1 | tail -1 | tee -a $R
for m in e7 m7; do
  timeout 170 python3 bench/engine_decode.py --model /tmp/$m --prompt copy --speculative ngram --concurrency 1 8 \
    --max-tokens 128 > $OUT/spec-$m.txt 2>&1
  echo "== $m (e7 echo target, m7 random weights) rc=$?" | tee -a $R
  grep -E "c= |speculation on|speed-up|Error|error" $OUT/spec-$m.txt | tail -14 | tee -a $R
done
