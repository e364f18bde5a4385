#!/bin/bash
# GPU job P18d: the continuous batch's host loop with and without our patches of transformers 5.23's loop
# (infer/greedy_steps.py: greedy steps take the argmax; infer/read_indices.py: the KV read index built with numpy;
# infer/carry_over.py: async batching's carry-over map without a Python list, only the used index entries copied to
# the device), switched in one invocation by bench/engine_decode.py's bench-only "_fast_paths" key, on one H200.
# The incremental stream decoder (infer/decoding.py) is on in both variants.
#   here: bash bench/gpu/stage.sh            (once: .whl .whls .gputok)
#   there: bash bench/gpu/job_p18d.sh        (carry .whl .whls .gputok; <= 7 min; everything under $OUT, summary p18d.txt)
# 1. engine alone, Qwen2.5-0.5B shape: 1 / 8 / 64 streams, 256 tokens, fast and off (ms/step per loop phase, wall
#    and the loop thread's CPU)
# 2. bench/serve.py --servers tunesmith transformers --concurrency 1 64 (0.5B, end to end, with the patches)
# 3. the gpu tests of the patches (CUDA graphs, async batching: greedy steps take their own graphs, answers as
#    unpatched in float32) and of --speculative ngram, which builds on them
# 4. with the time left of 7 minutes: engine alone, Qwen2.5-7B shape, 8 / 64 streams, fast and off
# A step that fails or times out is reported (rc) and the next one runs.
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
R=$OUT/p18d.txt
step() {  # NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt, rc and key lines to the summary
  local name=$1 limit=$2 rc=0; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1 || rc=$?
  echo "== $name rc=$rc ($((SECONDS - started)) s)" | tee -a "$R"
  grep -E "c= |GPU busy|passed|failed|error|Error|tunesmith|transformers " "$OUT/$name.txt" | grep -v "^WARNING" \
    | tail -24 | tee -a "$R" || true
}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl .whls/*.whl 2>&1 | tail -3 | tee -a "$R"
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESMITH_TEST_TOKENIZER=$PWD/.gputok
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -m tunesmith.cli.main "$@"\n' > /tmp/bin/tunesmith
printf '#!/bin/sh\nexec python3 -m transformers.cli.transformers "$@"\n' > /tmp/bin/transformers
chmod +x /tmp/bin/tunesmith /tmp/bin/transformers
export PATH=/tmp/bin:$PATH
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  git log --oneline -1 2>/dev/null || true; } 2>&1 | tee -a "$R"

python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 \
  > "$OUT/shape05.txt" 2>&1 || { tail -5 "$OUT/shape05.txt" | tee -a "$R"; exit 1; }
step engine05 150 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 1 8 64 --max-tokens 256 --host-timing \
  --out "$OUT/engine05.json" --variant fast '{}' --variant off '{"_fast_paths": false}'
step serve05 170 python3 bench/serve.py --model /tmp/m05 --servers tunesmith transformers --concurrency 1 64 \
  --rounds 1 --max-tokens 256
cp /tmp/bench-*.log "$OUT/" 2>/dev/null || true
rm -rf /tmp/m05

step gpu-tests 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/infer/test_continuous_fast_paths.py \
  tests/infer/test_speculative_batch.py -k "not (speculative_batch and bfloat16)" --basetemp /tmp/gt

LEFT=$((420 - SECONDS))  # the 7B shape with what is left of 7 minutes (its weights take ~40 s to make)
if [ "$LEFT" -gt 120 ]; then
  python3 bench/make_shape_model.py --shape qwen2.5-7b-instruct --tokenizer .gputok --out /tmp/m7 \
    > "$OUT/shape7.txt" 2>&1 || { tail -5 "$OUT/shape7.txt" | tee -a "$R"; exit 1; }
  step engine7 $((420 - SECONDS)) python3 bench/engine_decode.py --model /tmp/m7 --concurrency 8 64 --max-tokens 256 \
    --host-timing --out "$OUT/engine7.json" --variant fast '{}' --variant off '{"_fast_paths": false}'
  rm -rf /tmp/m7
else
  echo "== engine7 skipped: $LEFT s left of 420" | tee -a "$R"
fi
echo "== done in $SECONDS s" | tee -a "$R"
