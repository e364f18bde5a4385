#!/bin/bash
# GPU job P18v: serving end to end after the host-loop and event-loop rounds, on one H200; run on three fresh machines
# for the spread (give the machine back between calls). Random-weight shapes with SmolLM2's tokenizer
# (bench/make_shape_model.py), ~212 prompt / 256 output tokens, greedy, streaming:
#   1. 0.5B shape: the engine alone at 64 streams (bench/engine_decode.py --host-timing), with the model's own layers
#      and with liger's fused ones, and at 64 streams x 3 requests each (deploy's load); deploy at 64 streams x 3 rounds;
#      deploy against `transformers serve` with 64 requests at once (time to first token side by side);
#   2. FULL=1 only: the gpu tests of the continuous batch's patches, then the 7B shape: engine alone and deploy at 64.
# PROFILE=1 adds, after the engine alone: the engine at 64 streams under bench/stack_sampler.py (the batching thread's
# stacks, measured rounds only) and under torch.profiler (GPU busy share, top kernels).
# deploy runs twice where it runs: as deployed (on CUDA its engine in its own process) and as tunesmith-inproc
# (--engine-process false: the engine in the server's process).
# VARIANTS=1 runs the engine alone with the model's own layers and liger's, decode rows off and on (eighth round);
# else only as deploy runs it. CHUNKED=N adds `tunesmith deploy --stream-interval N` (bench/serve.py's tunesmith-chunked) beside deploy wherever
# deploy runs, in the same call. SKIP_TTFT=1 leaves out the side by side with `transformers serve`.
# Carry .whl .whls .gputok (bench/gpu/stage.sh). Measured: 323 s with CHUNKED=4 PROFILE=1, 212 s with FULL=1
# SKIP_TTFT=1. Everything under $OUT (packed into all.tgz), summary p18v.txt.
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
R=$OUT/p18v.txt
source bench/gpu/common.sh
# deploy (its engine in its own process on CUDA) and, beside it, deploy with the engine in the server's process
OURS=(tunesmith tunesmith-inproc) CHUNKS=()
[ -n "${CHUNKED:-}" ] && OURS+=(tunesmith-chunked) CHUNKS=(--stream-interval "$CHUNKED")

python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 \
  > "$OUT/shape05.txt" 2>&1 || { tail -5 "$OUT/shape05.txt" | tee -a "$R"; exit 1; }
# the engine alone with the model's own layers, then with liger's fused layers, each without and with decode steps'
# query heads packed as rows (deploy's default on CUDA: both), then chunked
ENGINE_VARIANTS=(--variant default '{}')
[ "${VARIANTS:-0}" = 1 ] && ENGINE_VARIANTS=(--kernels none --variant own '{"_decode_rows": false}' --variant own+rows '{}'
  --variant liger '{"_kernels": "auto", "_decode_rows": false}' --variant default '{}')
[ -n "${CHUNKED:-}" ] && ENGINE_VARIANTS+=(--variant chunked "{\"_stream_interval\": $CHUNKED}")
step engine05 200 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 --host-timing \
  "${ENGINE_VARIANTS[@]}" --out "$OUT/engine05.json"
# the engine alone with the load deploy gets below: 64 streams of 3 requests each, one after another (their later
# prefills land in running batches), so the HTTP overhead compares like with like (the line above: one round)
step engine05r3 200 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 --rounds 3 \
  --out "$OUT/engine05r3.json"
# the fused layers' test after another that loads engines with them (liger's module-wide patches)
[ "${FULL:-0}" = 1 ] || step gpu-kernels 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/infer/test_continuous_fast_paths.py tests/infer/test_serving_kernels.py tests/infer/test_varlen_attention.py \
  tests/serve/test_engine_process.py \
  -k "not bfloat16" --basetemp /tmp/gk
if [ "${PROFILE:-0}" = 1 ]; then
  step stacks05 120 python3 bench/stack_sampler.py --out "$OUT/stacks05.txt" --when-exists /tmp/measuring \
    bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 --sample-flag /tmp/measuring
  step prof05 150 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 --profile
fi
step deploy05 420 python3 bench/serve.py --model /tmp/m05 --servers "${OURS[@]}" "${CHUNKS[@]}" \
  --concurrency 64 --rounds 3 --max-tokens 256 --prompt-tokens 212 --client-procs 4
[ "${SKIP_TTFT:-0}" = 1 ] || step ttft05 260 python3 bench/serve.py --model /tmp/m05 --servers tunesmith transformers \
  --concurrency 64 --rounds 1 --max-tokens 256 --prompt-tokens 212
cp /tmp/bench-tunesmith.log "$OUT/deploy05.log" 2>/dev/null || true
python3 - "$OUT" <<'PY' | tee -a "$R"
import json, re, sys
out = sys.argv[1]
try:
    for rounds, name in ((1, "engine05.json"), (3, "engine05r3.json")):
        engine = json.load(open(f"{out}/{name}"))["default@64"]["tok_s"]
        for server in ("tunesmith", "tunesmith-inproc", "tunesmith-chunked"):
            lines = [x for x in open(f"{out}/deploy05.txt") if re.match(rf"{server} +c=64", x)]
            if lines:
                deploy = float(re.search(r"([\d.]+) tok/s", lines[-1]).group(1))
                print(f"HTTP overhead at 64 streams, {server}: deploy {deploy:.0f} / engine ({rounds} round(s) per "
                      f"stream) {engine:.0f} tok/s -> {100 * (1 - deploy / engine):.1f} %")
except (OSError, KeyError, IndexError, AttributeError, ValueError) as err:
    print(f"HTTP overhead: not computed ({err!r})")
PY
rm -rf /tmp/m05
if [ "${FULL:-0}" = 1 ]; then
  step gpu-tests 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/infer/ -k "not (speculative_batch and bfloat16)" \
    --basetemp /tmp/gt
  python3 bench/make_shape_model.py --shape qwen2.5-7b-instruct --tokenizer .gputok --out /tmp/m7 \
    > "$OUT/shape7.txt" 2>&1 || { tail -5 "$OUT/shape7.txt" | tee -a "$R"; exit 1; }
  step engine7 150 python3 bench/engine_decode.py --model /tmp/m7 --concurrency 64 --max-tokens 256 \
    --out "$OUT/engine7.json"
  step deploy7 420 python3 bench/serve.py --model /tmp/m7 --servers "${OURS[@]}" "${CHUNKS[@]}" \
    --concurrency 64 --rounds 2 --max-tokens 256 --prompt-tokens 212
fi
echo "== done in $SECONDS s" | tee -a "$R"
pack_out
